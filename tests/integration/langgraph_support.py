"""A LangGraph agent graph for the checkpointer's tests and benchmark: one model node, one tool
node, one tool call per turn, so the message list grows by four messages a turn (the user's,
the call, the tool's answer, the reply). The "model" is deterministic and costs nothing.

Run as a script it is one process of the restart test: ``ask`` starts a turn that stops at an
interrupt before the tool runs; ``resume`` (a new process) resumes it from the store.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

# Words for the messages' text: drawn at random from a small vocabulary, it compresses about as
# well as prose does (a repeated phrase would flatter PostgreSQL's compression).
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "model",
    "graph",
    "thread",
    "state",
    "store",
    "node",
    "tool",
    "answer",
    "query",
    "result",
    "table",
    "index",
    "query",
    "server",
]
# Words per message: about the size of the conversation (206 KB for 100 turns of 4).
MESSAGE_WORDS = 80


def filler(seed: int) -> str:
    draw = random.Random(seed)
    return " ".join(draw.choice(WORDS) for _ in range(MESSAGE_WORDS))


def _model(state: MessagesState) -> dict[str, Any]:
    last = state["messages"][-1]
    turn = sum(isinstance(m, HumanMessage) for m in state["messages"])
    if isinstance(last, HumanMessage):
        call = {"name": "lookup", "args": {"query": str(last.content)[:40]}, "id": f"call-{turn}"}
        text = f"looking up {turn}: {filler(4 * turn + 1)}"
        return {"messages": [AIMessage(content=text, tool_calls=[call])]}
    return {"messages": [AIMessage(content=f"answer {turn}: {filler(4 * turn + 3)}")]}


def _route(state: MessagesState) -> str:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else END


def agent_graph(
    checkpointer: BaseCheckpointSaver[Any], *, approval: bool = False
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph; with ``approval`` the tool node asks a human first (``interrupt``)."""

    def tools(state: MessagesState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        call = last.tool_calls[0]
        verdict = interrupt({"approve": call["name"]}) if approval else "auto"
        turn = sum(isinstance(m, HumanMessage) for m in state["messages"])
        content = f"{verdict}: result for {call['args']['query']} {filler(4 * turn + 2)}"
        return {"messages": [ToolMessage(content=content, tool_call_id=call["id"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", _model)
    builder.add_node("tools", tools)
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", _route, ["tools", END])
    builder.add_edge("tools", "model")
    return builder.compile(checkpointer=checkpointer)


def user_turn(n: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=f"question {n}: {filler(4 * n)}")]}


def _main(phase: str, url: str, config: RunnableConfig) -> None:
    from store import Store
    from store.integrations.langgraph import SessionkeeperSaver

    with Store(url) as db:
        graph = agent_graph(SessionkeeperSaver(db), approval=True)
        if phase == "ask":
            result = graph.invoke(user_turn(1), config)
        else:
            result = graph.invoke(Command(resume="approved"), config)
        print(
            json.dumps(
                {
                    "interrupts": [i.value for i in result.get("__interrupt__", [])],
                    "messages": [[m.type, m.content] for m in result["messages"]],
                }
            )
        )


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
