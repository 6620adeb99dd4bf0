"""A real OpenAI-compatible chat-completions server for tests, scripted per test.

It is a stdlib HTTP server on a free port in a background thread: rtem's LLM client talks to it through
the official openai SDK exactly as it would to a provider. Each test queues replies per task
(`diagnosis`, `proposals`, `chat_answer`; the task is read from the request's response format or forced tool):

    server.on("diagnosis", {"hypotheses": [...], "summary": "..."})    # a JSON answer
    server.on("diagnosis", "not json at all")                         # raw text
    server.on("proposals", Status(500), Delay(2.0, good_proposals))   # an error, then a slow answer
    server.on("diagnosis", good_diagnosis)                            # computed from the request

When a task's queue is empty, its `default` reply is used (HTTP 500 if there is none). Answers follow the
request's structured-output style: a forced tool call gets `tool_calls`, a json_schema request `content`.
Every request body is kept in `requests` for assertions.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Status:
    """An HTTP error reply."""

    code: int
    message: str = "scripted failure"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delay:
    """Wait, then reply (longer than the client's timeout: a timeout)."""

    seconds: float
    then: Any = None


@dataclass
class ToolCall:
    """A call of one of the other tools the request offers (such as query_prometheus), not the answer."""

    name: str
    arguments: dict


Reply = Union[dict, str, Status, Delay, ToolCall, Callable[[dict], Any]]


class ScriptedLLM:
    def __init__(self) -> None:
        self.queues: dict[str, deque] = defaultdict(deque)
        self.default: dict[str, Reply] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-llm", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def on(self, task: str, *replies: Reply) -> ScriptedLLM:
        with self._lock:
            self.queues[task].extend(replies)
        return self

    def tasks(self) -> list[str]:
        return [task_of(r) for r in self.requests]

    def texts(self, task: str | None = None) -> list[str]:
        """The prompt text of each request (all messages joined), optionally for one task."""
        return ["\n".join(str(m.get("content", "")) for m in r["messages"]) for r in self.requests
                if task is None or task_of(r) == task]

    def user_prompt(self, task: str, index: int = 0) -> str:
        """The first user message (the incident's context) of the `index`-th request for `task`."""
        body = [r for r in self.requests if task_of(r) == task][index]
        return next(m["content"] for m in body["messages"] if m["role"] == "user")

    # -- serving ----------------------------------------------------------------------------------

    def _next(self, task: str) -> Reply:
        with self._lock:
            if self.queues[task]:
                return self.queues[task].popleft()
            return self.default.get(task, Status(500, f"nothing scripted for {task}"))

    def _handler(self):
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with scripted._lock:
                    scripted.requests.append(body)
                reply = scripted._next(task_of(body))
                while True:
                    if isinstance(reply, Delay):
                        time.sleep(reply.seconds)
                        reply = reply.then if reply.then is not None else Status(504, "scripted delay")
                    elif callable(reply) and not isinstance(reply, (dict, str, Status, ToolCall)):
                        reply = reply(body)
                    else:
                        break
                if isinstance(reply, Status):
                    return self._send(reply.code, {"error": {"message": reply.message, "type": "scripted"}},
                                      reply.headers)
                if isinstance(reply, ToolCall):
                    return self._send(200, tool_completion(body, reply))
                text = reply if isinstance(reply, str) else json.dumps(reply)
                self._send(200, completion(body, text))

            def _send(self, code: int, doc: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

        return Handler


def task_of(body: dict[str, Any]) -> str:
    """`diagnosis`, `proposals` or `chat_answer`: the name of the requested schema or forced tool."""
    forced = body.get("tool_choice")
    if isinstance(forced, dict):
        return forced.get("function", {}).get("name", "?")
    if body.get("tools") and "response_format" not in body:  # the answer tool comes first, other tools after
        return body["tools"][0]["function"]["name"]
    return body.get("response_format", {}).get("json_schema", {}).get("name", "?")


def schema_of(body: dict[str, Any]) -> dict[str, Any]:
    """The answer schema the client sent, in either style."""
    if body.get("tools") and "response_format" not in body:
        return body["tools"][0]["function"]["parameters"]
    return body["response_format"]["json_schema"]["schema"]


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    finish = "stop"
    if body.get("tools") and "response_format" not in body:
        name = body["tools"][0]["function"]["name"]
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": text}}]}
        finish = "tool_calls"
    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "scripted"), "system_fingerprint": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(text) // 4 + 1,
                      "total_tokens": prompt + len(text) // 4 + 1}}


def tool_completion(body: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """A completion in which the model calls `call.name` (one of the request's tools) instead of answering."""
    offered = [t["function"]["name"] for t in body.get("tools", [])]
    assert call.name in offered, f"scripted a call of {call.name}, but the request offers {offered}"
    done = completion(body, json.dumps(call.arguments))
    done["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{len(body.get('messages', []))}", "type": "function",
         "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]}
    done["choices"][0]["finish_reason"] = "tool_calls"
    return done


# -- answers computed from the request ---------------------------------------------------------------


def candidates_in(body: dict[str, Any]) -> list[str]:
    """The candidate entities the client allowed (the `entity` enum of the diagnosis schema)."""
    item = schema_of(body)["properties"]["hypotheses"]["items"]
    return list(item["properties"]["entity"].get("enum", []))


def good_diagnosis(body: dict[str, Any], pick: int = 1) -> dict[str, Any]:
    """A valid diagnosis that puts the `pick`-th candidate (0-based) first: the LLM disagreeing with the
    deterministic ranking, within the evidence."""
    names = candidates_in(body)
    first = names[min(pick, len(names) - 1)]
    others = [n for n in names if n != first][:2]
    hyps = [{"entity": first, "fault_type": "cpu", "confidence": 0.9, "evidence": [],
             "explanation": f"{first} saturated first; the others follow it."}]
    hyps += [{"entity": n, "fault_type": "unknown", "confidence": 0.05, "evidence": [], "explanation": "a symptom"}
             for n in others]
    return {"hypotheses": hyps, "summary": f"{first} is the most likely root cause."}


def allowed_actions(body: dict[str, Any]) -> dict[str, list[str]]:
    """Action type → allowed targets, read from the proposal schema the client sent."""
    variants = schema_of(body)["properties"]["actions"]["items"].get("anyOf", [])
    return {v["properties"]["type"]["const"]: list(v["properties"]["target"].get("enum", [])) for v in variants}


def good_proposals(body: dict[str, Any]) -> dict[str, Any]:
    """A valid, low-risk plan: restart an allowed instance (when there is one) and page a person."""
    allowed = allowed_actions(body)
    actions = []
    if allowed.get("restart_instance"):
        actions.append({"type": "restart_instance", "target": allowed["restart_instance"][0],
                        "params": {"grace_seconds": 30}, "reason": "restart the saturated instance"})
    target = allowed["notify_oncall"][0]
    actions.append({"type": "notify_oncall", "target": target,
                    "params": {"summary": f"LLM plan: look at {target}", "severity": "warning"},
                    "reason": "tell a person first"})
    return {"actions": actions, "summary": "restart and page the on-call person"}


def retrieved(body: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The decision-record seqs and event ids a chat request offered (its `[seq N]` and `[event ID]` lines)."""
    text = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return ([int(s) for s in re.findall(r"^\[seq (\d+)\]", text, re.M)],
            re.findall(r"^\[event ([^\]\s]+)\]", text, re.M))


def chat_answer(text: str, seqs=(), events=(), grounded: bool = True) -> dict[str, Any]:
    return {"grounded": grounded, "answer": text, "citations": {"seqs": list(seqs), "events": list(events)}}


def cited_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A grounded answer citing the last decision record and the first event the request offered."""
    seqs, events = retrieved(body)
    return chat_answer(f"See seq {seqs[-1]}.", seqs[-1:], events[:1])
