"""Glue for the frameworks bots are built with, one module per framework, each behind an extra
of the same name (``pip install 'sessionkeeper[aiogram]'``). This package imports nothing:
``import store`` never loads a framework."""
