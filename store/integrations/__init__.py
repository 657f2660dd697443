"""Integrations with bot and LLM frameworks, one module per framework, each behind the extra of
the same name (``pip install 'sessionkeeper[langchain]'``, ``[aiogram]``, ``[telegram]``). This
package imports nothing: ``import store`` never imports a framework."""
