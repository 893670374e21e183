"""End-to-end tests of DSPy's code-running modules on a sandboxkit backend, without a paid model.

Scripted language models stand in for the model: ``dspy.utils.DummyLM`` plays the planner that
writes RLM's code step by step, and :class:`ScriptedLM` plays the sub-model whose every reply is
computed from the prompt it receives, so a test can prove which text reached it. Every assertion
checks something only real execution in the sandbox can produce: printed values, variables kept
between steps, host tools and predictors reached from sandbox code, typed ``SUBMIT`` results.

The test classes need one fixture, ``sandboxkit_backend_name`` (a ``str``), and use
``sandboxkit_options`` (a ``dict`` of options for :func:`sandboxkit.factory`) when it exists. The
sandboxkit pytest plugin provides both; a backend's test module then only says::

    from sandboxkit.conformance.dspy_suite import DSPySuite

    class TestDSPyOnMyBackend(DSPySuite):
        backend = "mybackend"

The same tests run on DSPy 3.1 (RLM takes an ``interpreter`` instance, which the test shuts down)
and on DSPy >= 3.3 (modules take an ``interpreter_factory``); a test whose module or plugging
style the installed DSPy lacks is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import json
import re
import threading
import time
import warnings
from typing import Any, Callable, Iterator

import dspy
import pytest
from dspy.utils import DummyLM
from dspy.utils.callback import BaseCallback

import sandboxkit
from sandboxkit.errors import CodeExecutionError, SessionEndedError

__all__ = [
    "CallbackScenarios",
    "CodeModuleScenarios",
    "DSPyFeatures",
    "DSPySandbox",
    "DSPySuite",
    "Prompt",
    "RLMPluggingStyles",
    "RLMScenarios",
    "ScriptedLM",
    "assert_all_shut_down",
    "dspy_features",
    "step",
]

FIBONACCI_12 = "0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89"


# -- what the installed DSPy offers -----------------------------------------------------------
def _params(func: Any) -> set[str]:
    try:
        return set(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return set()


def _plugging(cls: Any) -> str | None:
    """How a code-running module takes its interpreter: ``"factory"``, ``"instance"`` or None."""
    if cls is None:
        return None
    params = _params(cls.__init__)
    if "interpreter_factory" in params:
        return "factory"
    if "interpreter" in params:
        return "instance"
    return None


@dataclasses.dataclass(frozen=True)
class DSPyFeatures:
    """What the installed DSPy supports, read from its signatures rather than its version number."""

    version: str
    rlm_factory: bool  # dspy.RLM(..., interpreter_factory=...) and dspy.configure(interpreter_factory=...)
    rlm_call_factory: bool  # rlm(..., interpreter_factory=...) for one call
    rlm_iters_kw: str  # "max_iters" (>= 3.3) or "max_iterations" (3.1)
    pot: str | None  # plugging style of dspy.ProgramOfThought
    codeact: str | None  # plugging style of dspy.CodeAct
    flex: bool  # dspy.Flex exists
    facade: bool  # sandboxed code can `import dspy` and build predictors that run on the host


@functools.lru_cache(maxsize=1)
def dspy_features() -> DSPyFeatures:
    """Inspect the installed DSPy once."""
    rlm_init = _params(dspy.RLM.__init__)
    codeact = getattr(dspy, "CodeAct", None)
    if codeact is None:
        from dspy.predict import code_act

        codeact = getattr(code_act, "CodeAct", None)
    return DSPyFeatures(
        version=getattr(dspy, "__version__", "unknown"),
        rlm_factory="interpreter_factory" in rlm_init,
        rlm_call_factory="interpreter_factory" in _params(dspy.RLM.forward),
        rlm_iters_kw="max_iters" if "max_iters" in rlm_init else "max_iterations",
        pot=_plugging(getattr(dspy, "ProgramOfThought", None)),
        codeact=_plugging(codeact),
        flex=hasattr(dspy, "Flex"),
        facade=importlib.util.find_spec("dspy.primitives.facade") is not None,
    )


def _require(condition: bool, what: str) -> None:
    if not condition:
        pytest.skip(f"DSPy {dspy_features().version} has no {what}")


# -- scripted language models -----------------------------------------------------------------
_SECTION = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## \w+ ## \]\]|\n\nRespond with|\Z)", re.DOTALL)
_REQUESTED = re.compile(r"`\[\[ ## (\w+) ## \]\]`")


@dataclasses.dataclass
class Prompt:
    """One call to a :class:`ScriptedLM`: the whole ``text`` and, for a DSPy chat prompt, the
    ``inputs`` (field name -> value text) of the last user turn and the ``outputs`` it asks for."""

    text: str
    inputs: dict[str, str]
    outputs: list[str]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _parse_prompt(prompt: Any, messages: Any) -> Prompt:
    if messages:
        texts = [_content_text(m.get("content", "")) if isinstance(m, dict) else str(m) for m in messages]
        users = [t for m, t in zip(messages, texts) if isinstance(m, dict) and m.get("role") == "user"]
        last_user = users[-1] if users else texts[-1]
        text = "\n\n".join(texts)
    else:
        text = last_user = "" if prompt is None else str(prompt)
    inputs = {name: value.strip() for name, value in _SECTION.findall(last_user)}
    respond_line = last_user[last_user.rfind("Respond with"):] if "Respond with" in last_user else ""
    outputs = [name for name in _REQUESTED.findall(respond_line) if name != "completed"]
    return Prompt(text=text, inputs=inputs, outputs=outputs)


def _format_fields(fields: dict[str, Any]) -> str:
    """A reply in DSPy's chat format, the way a model following the prompt writes it."""
    parts = [f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
             for name, value in fields.items()]
    return "\n\n".join(parts + ["[[ ## completed ## ]]"])


class ScriptedLM(dspy.BaseLM):
    """An offline LM whose reply to each call is ``respond(Prompt)``.

    A ``str`` reply is returned as the completion (what ``llm_query`` hands to sandbox code); a
    ``dict`` reply is written as DSPy chat-format output fields (what a predictor parses). Every
    call is recorded in ``calls``; calls may come from several threads at once.
    """

    def __init__(self, respond: Callable[[Prompt], str | dict[str, Any]]) -> None:
        super().__init__(model="sandboxkit/scripted", model_type="chat", temperature=0.0, max_tokens=1000, cache=False)
        self._respond = respond
        self._lock = threading.Lock()
        self.calls: list[Prompt] = []

    def __call__(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> list[str]:
        call = _parse_prompt(prompt, messages)
        with self._lock:
            self.calls.append(call)
        reply = self._respond(call)
        text = _format_fields(reply) if isinstance(reply, dict) else str(reply)
        return [text] * max(1, int(kwargs.get("n") or 1))

    async def acall(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> list[str]:
        return self(prompt, messages, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - __call__ is overridden
        raise NotImplementedError("ScriptedLM answers through __call__")

    @property
    def prompts(self) -> list[str]:
        return [call.text for call in self.calls]


def step(reasoning: str, code: str) -> dict[str, str]:
    """One scripted RLM action: the planner's reasoning and a fenced Python block."""
    return {"reasoning": reasoning, "code": f"```python\n{code.strip()}\n```"}


def _steps(result: Any) -> str:
    """The outputs of an RLM run's steps, for assertion messages."""
    lines = [f"step {i + 1} output: {entry.get('output', '')!r}" for i, entry in enumerate(result.trajectory)]
    return "RLM trajectory:\n" + "\n".join(lines)


def _lm_texts(lm: Any) -> list[str]:
    """The prompt text of each call recorded in a DSPy LM's history."""
    texts = []
    for entry in getattr(lm, "history", []):
        messages = entry.get("messages")
        if messages:
            texts.append("\n\n".join(_content_text(m.get("content", "")) for m in messages))
        else:
            texts.append(str(entry.get("prompt") or entry.get("request") or ""))
    return texts


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DSPy's experimental/deprecation notices for the module under test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


# -- the sandbox under test -------------------------------------------------------------------
class _TrackingFactory:
    """Wraps a sandboxkit factory and remembers every interpreter it made."""

    def __init__(self, inner: Callable[[], Any]) -> None:
        self.inner = inner
        self.made: list[Any] = []

    @property
    def execution_instructions(self) -> str:
        return self.inner.execution_instructions

    def __call__(self) -> Any:
        interpreter = self.inner()
        self.made.append(interpreter)
        return interpreter


class DSPySandbox:
    """The backend under test, as DSPy modules plug it in; made by the ``dspy_sandbox`` fixture.

    It creates interpreters only through :func:`sandboxkit.factory` / :func:`sandboxkit.interpreter`
    with the configured backend and options, and shuts down anything still running in :meth:`close`.
    """

    def __init__(self, backend: str, options: dict[str, Any]) -> None:
        self.backend = backend
        self.options = dict(options)
        self._factories: list[_TrackingFactory] = []
        self._instances: list[Any] = []

    @property
    def features(self) -> DSPyFeatures:
        return dspy_features()

    def factory(self) -> _TrackingFactory:
        """A (tracking) sandboxkit factory for the backend."""
        tracking = _TrackingFactory(sandboxkit.factory(self.backend, **self.options))
        self._factories.append(tracking)
        return tracking

    def interpreter(self) -> Any:
        """An unstarted interpreter the caller owns (closed again in :meth:`close`)."""
        interpreter = sandboxkit.interpreter(self.backend, **self.options)
        self._instances.append(interpreter)
        return interpreter

    @contextlib.contextmanager
    def rlm(self, signature: Any, *, max_iters: int = 5, **kwargs: Any) -> Iterator[Any]:
        """A ``dspy.RLM`` on the backend, plugged in the way the installed DSPy supports.

        DSPy >= 3.3: ``interpreter_factory=``; on exit, checks RLM shut down every interpreter it
        made. DSPy 3.1: an ``interpreter=`` instance, shut down here on exit.
        """
        iters = {self.features.rlm_iters_kw: max_iters}
        if self.features.rlm_factory:
            factory = self.factory()
            with _quiet():
                rlm = dspy.RLM(signature, interpreter_factory=factory, **iters, **kwargs)
            yield rlm
            assert_all_shut_down(factory.made)
        else:
            interpreter = self.interpreter()
            try:
                with _quiet():
                    rlm = dspy.RLM(signature, interpreter=interpreter, **iters, **kwargs)
                yield rlm
            finally:
                interpreter.shutdown()

    def plug(self, style: str | None) -> tuple[dict[str, Any], Callable[[], None]]:
        """Constructor kwargs giving a ProgramOfThought/CodeAct the backend, and a cleanup to call."""
        if style == "factory":
            factory = self.factory()
            return {"interpreter_factory": factory}, lambda: assert_all_shut_down(factory.made)
        interpreter = self.interpreter()
        return {"interpreter": interpreter}, interpreter.shutdown

    def close(self) -> None:
        for interpreter in [*self._instances, *(i for f in self._factories for i in f.made)]:
            try:
                interpreter.shutdown()
            except Exception:  # noqa: BLE001 - best-effort cleanup after a failed test
                pass


def assert_all_shut_down(interpreters: list[Any]) -> None:
    """Every interpreter a DSPy module made was shut down by it (a leak is a bug)."""
    assert interpreters, "the module never asked the factory for an interpreter"
    for interpreter in interpreters:
        try:
            interpreter.execute("1")
        except SessionEndedError:
            continue
        pytest.fail(f"{interpreter!r} was left running: a DSPy module must shut down every interpreter it makes")


def _context(lm: Any, **settings: Any) -> contextlib.AbstractContextManager[Any]:
    return dspy.context(lm=lm, adapter=dspy.ChatAdapter(), **settings)


class _SandboxFixture:
    """Provides ``dspy_sandbox`` from the kit's ``sandboxkit_backend_name``/``sandboxkit_options``."""

    #: The backend under test; None defers to ``--sandboxkit-backend`` (see the kit's plugin).
    backend: str | None = None

    @pytest.fixture
    def dspy_sandbox(self, request: pytest.FixtureRequest, sandboxkit_backend_name: str) -> Iterator[DSPySandbox]:
        try:
            options = request.getfixturevalue("sandboxkit_options")
        except pytest.FixtureLookupError:
            options = {}
        sandbox = DSPySandbox(sandboxkit_backend_name, dict(options or {}))
        try:
            yield sandbox
        finally:
            sandbox.close()


# -- documents the scenarios work on ----------------------------------------------------------
_FILLER = ("river", "copper", "lantern", "meadow", "orbit", "granite", "willow", "harbor", "signal", "ember")


def _long_document(fact: str, size: int = 200_000, at: float = 0.61) -> str:
    """About ``size`` characters of numbered filler paragraphs with ``fact`` hidden at ``at``."""
    paragraphs, total, index = [], 0, 0
    while total < size:
        words = " ".join(_FILLER[(index * 7 + k * 3) % len(_FILLER)] for k in range(14))
        paragraph = f"Paragraph {index}: {words}."
        paragraphs.append(paragraph)
        total += len(paragraph) + 1
        index += 1
    paragraphs.insert(int(len(paragraphs) * at), fact)
    return "\n".join(paragraphs)


_CHUNK_SEPARATOR = "\n---8<---\n"


def _chunked_document(apple_counts: list[int]) -> str:
    chunks = []
    for index, count in enumerate(apple_counts):
        words = [_FILLER[(index + k) % len(_FILLER)] for k in range(40)]
        for k in range(count):
            words.insert(3 + 5 * k, "apple")
        chunks.append(f"Chunk body {index}: " + " ".join(words))
    return _CHUNK_SEPARATOR.join(chunks)


_LOG_LINES = [
    "INFO service started",
    "ERROR timeout contacting billing after 30s",
    "WARN cache nearly full",
    "ERROR disk full on /var/data",
    "INFO request served",
    "ERROR timeout contacting search after 30s",
    "ERROR auth token expired for user 42",
    "INFO shutting down",
    "ERROR timeout contacting billing after 60s",
]


# -- RLM scenarios ----------------------------------------------------------------------------
@pytest.mark.dspy_e2e
class RLMScenarios(_SandboxFixture):
    """dspy.RLM on the backend: the use cases of a code-writing agent, each step scripted."""

    def test_rlm_fibonacci(self, dspy_sandbox: DSPySandbox) -> None:
        lm = DummyLM([
            step("Compute the numbers in code and look at them.",
                 "fib = [0, 1]\nwhile len(fib) < 12:\n    fib.append(fib[-2] + fib[-1])\n"
                 "print(', '.join(map(str, fib)))"),
            step("The printed sequence is right; submit it from the variable.",
                 "SUBMIT(answer=', '.join(str(n) for n in fib))"),
        ])
        with dspy_sandbox.rlm("question -> answer", max_iters=5) as rlm, _context(lm):
            result = rlm(question="What are the first 12 Fibonacci numbers? Return them comma-separated.")
        assert result.answer == FIBONACCI_12, _steps(result)
        assert FIBONACCI_12 in result.trajectory[0]["output"]
        assert len(result.trajectory) == 2

    def test_rlm_long_document_llm_query(self, dspy_sandbox: DSPySandbox) -> None:
        document = _long_document("Note for operators: the vault access code is 7G-4412-Q, rotate it monthly.")
        assert len(document) > 200_000

        def sub_model(prompt: Prompt) -> str:
            found = re.search(r"vault access code is ([A-Z0-9-]+)", prompt.text)
            return f"{found.group(1)}" if found else "NOT FOUND"

        sub_lm = ScriptedLM(sub_model)
        lm = DummyLM([
            step("Measure the document and locate the passage with a regex.",
                 "import re\nprint(len(document))\nhit = re.search(r'vault access code', document, re.IGNORECASE)\n"
                 "snippet = document[max(0, hit.start() - 150):hit.end() + 150]\nprint(hit.start())"),
            step("Ask the sub-model about the snippet only.",
                 "reply = llm_query('Which vault access code does this excerpt give?\\n' + snippet)\nprint(reply)"),
            step("Submit the code and where it was found.",
                 "SUBMIT(access_code=reply.strip(), offset=hit.start())"),
        ])
        signature = "document: str, question: str -> access_code: str, offset: int"
        with dspy_sandbox.rlm(signature, max_iters=5, sub_lm=sub_lm) as rlm, _context(lm):
            result = rlm(document=document, question="What is the vault access code?")

        assert result.access_code == "7G-4412-Q", _steps(result)
        assert result.offset == document.index("vault access code")
        assert str(len(document)) in result.trajectory[0]["output"]
        assert "7G-4412-Q" in result.trajectory[1]["output"]
        assert len(sub_lm.calls) == 1
        (sent,) = sub_lm.prompts
        assert "the vault access code is 7G-4412-Q" in sent
        assert len(sent) < 1_000, "only the snippet, not the whole document, should reach the sub-model"

    def test_rlm_llm_query_defaults_to_context_lm(self, dspy_sandbox: DSPySandbox) -> None:
        """Without ``sub_lm``, ``llm_query`` from sandbox code uses the LM of the caller's ``dspy.context``."""
        steps = iter([
            step("Ask the sub-model.", "reply = llm_query('sandbox says hello')\nprint(reply)"),
            step("Submit its reply.", "SUBMIT(answer=reply)"),
        ])

        def model(prompt: Prompt) -> str | dict[str, Any]:
            if prompt.outputs == ["reasoning", "code"]:  # RLM's planner
                return next(steps, step("Out of script.", "SUBMIT(answer='script exhausted')"))
            return "reversed: " + prompt.text[::-1]  # llm_query

        lm = ScriptedLM(model)
        with dspy_sandbox.rlm("question -> answer", max_iters=4) as rlm, _context(lm):
            result = rlm(question="Relay a message.")
        assert result.answer == "reversed: olleh syas xobdnas", _steps(result)
        assert result.trajectory[0]["output"].strip() == result.answer

    def test_rlm_llm_query_batched(self, dspy_sandbox: DSPySandbox) -> None:
        counts = [3, 0, 5, 1, 4]
        text = _chunked_document(counts)

        def sub_model(prompt: Prompt) -> str:
            index = int(re.match(r"Chunk (\d+):", prompt.text).group(1))
            time.sleep(0.02 * (len(counts) - index))  # later chunks finish first
            return f"chunk {index} has {prompt.text.count('apple')} apples"

        sub_lm = ScriptedLM(sub_model)
        lm = DummyLM([
            step("Split into chunks and ask about all of them in one batched call.",
                 f"chunks = text.split({_CHUNK_SEPARATOR!r})\n"
                 "prompts = [f'Chunk {i}: how often is the fruit named?\\n' + c for i, c in enumerate(chunks)]\n"
                 "replies = llm_query_batched(prompts)\nfor r in replies:\n    print(r)"),
            step("Add the counts up in code.",
                 "SUBMIT(replies=replies, total=sum(int(r.split()[3]) for r in replies))"),
        ])
        signature = "text -> replies: list[str], total: int"
        with dspy_sandbox.rlm(signature, max_iters=4, sub_lm=sub_lm) as rlm, _context(lm):
            result = rlm(text=text)

        expected = [f"chunk {i} has {c} apples" for i, c in enumerate(counts)]
        assert result.replies == expected, _steps(result)
        assert result.total == sum(counts)
        assert result.trajectory[0]["output"].split("\n")[: len(counts)] == expected
        assert sorted(int(re.match(r"Chunk (\d+):", p).group(1)) for p in sub_lm.prompts) == list(range(len(counts)))

    def test_rlm_multi_step_state_typed_outputs(self, dspy_sandbox: DSPySandbox) -> None:
        class FindErrorPatterns(dspy.Signature):
            """Find and categorize the error lines of a log."""

            docs: str = dspy.InputField(desc="log text")
            error_categories: dict = dspy.OutputField(desc="error kind -> number of lines")
            total_errors_found: int = dspy.OutputField(desc="number of error lines")

        lm = DummyLM([
            step("Keep the error lines.",
                 "errors = [line for line in docs.splitlines() if line.startswith('ERROR')]\nprint(len(errors))"),
            step("Group them by kind, reusing `errors`.",
                 "categories = {}\nfor line in errors:\n    categories.setdefault(line.split()[1], []).append(line)\n"
                 "print(sorted(categories))"),
            step("Submit counts computed from both earlier steps.",
                 "SUBMIT(error_categories={k: len(v) for k, v in categories.items()}, total_errors_found=len(errors))"),
        ])
        with dspy_sandbox.rlm(FindErrorPatterns, max_iters=5) as rlm, _context(lm):
            result = rlm(docs="\n".join(_LOG_LINES))

        errors = [line for line in _LOG_LINES if line.startswith("ERROR")]
        expected: dict[str, int] = {}
        for line in errors:
            expected[line.split()[1]] = expected.get(line.split()[1], 0) + 1
        assert isinstance(result.error_categories, dict)
        assert result.error_categories == expected, _steps(result)
        assert isinstance(result.total_errors_found, int) and not isinstance(result.total_errors_found, bool)
        assert result.total_errors_found == len(errors)
        assert result.trajectory[0]["output"].strip() == str(len(errors))
        assert result.trajectory[1]["output"].strip() == str(sorted(expected))

    def test_rlm_trajectory_inspection(self, dspy_sandbox: DSPySandbox) -> None:
        text = "Sandboxes keep model-written code away from the host. " * 3
        steps = [
            step("Look at the start of the text.", "print(text[:40])"),
            step("Count the words and keep them.", "words = text.split()\nprint(len(words))"),
            step("Summarize from the kept variable.",
                 "SUBMIT(summary=f'{len(words)} words, starting with {words[0]}')"),
        ]
        with dspy_sandbox.rlm("text -> summary", max_iters=5) as rlm, _context(DummyLM(list(steps))):
            result = rlm(text=text)

        words = text.split()
        assert result.summary == f"{len(words)} words, starting with {words[0]}", _steps(result)
        assert len(result.trajectory) == 3
        for entry, scripted in zip(result.trajectory, steps):
            assert {"reasoning", "code", "output"} <= set(entry)
            assert entry["reasoning"] == scripted["reasoning"]
            assert entry["code"] == scripted["code"].removeprefix("```python\n").removesuffix("\n```")
        assert result.trajectory[0]["output"].strip() == text[:40].strip()
        assert result.trajectory[1]["output"].strip() == str(len(words))
        assert result.summary in result.trajectory[2]["output"]
        assert result.final_reasoning == steps[-1]["reasoning"]

    def test_rlm_custom_tool(self, dspy_sandbox: DSPySandbox) -> None:
        calls: list[tuple[int, str, int]] = []

        def regex_extract(text: str, pattern: str, flags: int = 0) -> list:
            """Return every match of ``pattern`` in ``text`` (``flags`` as for ``re.compile``)."""
            calls.append((len(text), pattern, flags))
            return re.compile(pattern, flags).findall(text)

        fence = "`" * 3
        docs = (f"# Guide\nIntro text.\n## Install\n{fence}bash\npip install thing\n{fence}\n"
                f"## Use\n{fence}python\nimport thing\n{fence}\n### Notes\nEnd.\n")

        class ExtractWithCustomTool(dspy.Signature):
            """Extract markdown headers and code block languages with the regex tool."""

            docs: str = dspy.InputField()
            headers: list = dspy.OutputField()
            code_blocks: list = dspy.OutputField()
            structure_summary: str = dspy.OutputField()

        lm = DummyLM([
            step("Use the host tool, once positionally and once by keyword.",
                 "headers = regex_extract(docs, r'^#+ (.+)$', 8)\n"
                 "langs = regex_extract(text=docs, pattern=r'`{3}(\\w+)')\nprint(headers)\nprint(langs)"),
            step("Submit what the tool found.",
                 "SUBMIT(headers=headers, code_blocks=langs, "
                 "structure_summary=f'{len(headers)} headers, {len(langs)} code blocks')"),
        ])
        with dspy_sandbox.rlm(ExtractWithCustomTool, max_iters=4, tools=[regex_extract]) as rlm, _context(lm):
            result = rlm(docs=docs)

        assert result.headers == ["Guide", "Install", "Use", "Notes"], _steps(result)
        assert result.code_blocks == ["bash", "python"]
        assert result.structure_summary == "4 headers, 2 code blocks"
        assert calls == [(len(docs), r"^#+ (.+)$", re.MULTILINE), (len(docs), r"`{3}(\w+)", 0)]
        assert "['Guide', 'Install', 'Use', 'Notes']" in result.trajectory[0]["output"]

    def test_rlm_recovers_from_code_error(self, dspy_sandbox: DSPySandbox) -> None:
        lm = DummyLM([
            step("Set a total, then divide badly.", "total = 10\nratio = total / 0"),
            step("The error is reported; the total survived.", "SUBMIT(answer=f'{total} recovered')"),
        ])
        with dspy_sandbox.rlm("question -> answer", max_iters=4) as rlm, _context(lm):
            result = rlm(question="Does state survive an error?")
        assert "ZeroDivisionError" in result.trajectory[0]["output"], _steps(result)
        assert result.answer == "10 recovered"


# -- plugging styles --------------------------------------------------------------------------
_STYLES = ("constructor", "configure", "context", "call", "instance")


@pytest.mark.dspy_e2e
class RLMPluggingStyles(_SandboxFixture):
    """The Fibonacci run with the backend plugged in each way the installed DSPy supports."""

    @staticmethod
    def _fibonacci_lm() -> DummyLM:
        return DummyLM([
            step("Compute and print.",
                 "fib = [0, 1]\nwhile len(fib) < 12:\n    fib.append(fib[-1] + fib[-2])\n"
                 "print(', '.join(map(str, fib)))"),
            step("Submit from the variable.", "SUBMIT(answer=', '.join(map(str, fib)))"),
        ])

    @pytest.mark.parametrize("style", _STYLES)
    def test_rlm_plugging_style(self, dspy_sandbox: DSPySandbox, style: str) -> None:
        features = dspy_sandbox.features
        if style == "instance":
            _require(not features.rlm_factory, "RLM(interpreter=...) (it takes interpreter_factory=)")
        elif style == "call":
            _require(features.rlm_call_factory, "per-call rlm(..., interpreter_factory=...)")
        else:
            _require(features.rlm_factory, f"interpreter_factory ({style} style)")

        iters = {features.rlm_iters_kw: 4}
        question = "What are the first 12 Fibonacci numbers? Return them comma-separated."
        lm = self._fibonacci_lm()
        factory = sandboxkit.factory(dspy_sandbox.backend, **dspy_sandbox.options)
        with _quiet():
            if style == "constructor":
                rlm = dspy.RLM("question -> answer", interpreter_factory=factory, **iters)
                assert factory.execution_instructions in rlm.generate_action.signature.instructions
                with _context(lm):
                    result = rlm(question=question)
            elif style == "configure":
                previous = dspy.settings.get("interpreter_factory")
                dspy.configure(interpreter_factory=factory)
                try:
                    rlm = dspy.RLM("question -> answer", **iters)
                    with _context(lm):
                        result = rlm(question=question)
                finally:
                    dspy.configure(interpreter_factory=previous)
            elif style == "context":
                rlm = dspy.RLM("question -> answer", **iters)  # built before the context: runtime picked per call
                with _context(lm, interpreter_factory=factory):
                    result = rlm(question=question)
            elif style == "call":
                rlm = dspy.RLM("question -> answer", **iters)
                with _context(lm):
                    result = rlm(question=question, interpreter_factory=factory)
            else:
                interpreter = dspy_sandbox.interpreter()
                try:
                    rlm = dspy.RLM("question -> answer", interpreter=interpreter, **iters)
                    with _context(lm):
                        result = rlm(question=question)
                finally:
                    interpreter.shutdown()

        assert result.answer == FIBONACCI_12, _steps(result)
        assert FIBONACCI_12 in result.trajectory[0]["output"]
        if style != "instance":
            prompts = _lm_texts(lm)
            assert prompts, "the scripted planner recorded no calls"
            assert factory.execution_instructions
            assert all(factory.execution_instructions in p for p in prompts), (
                "RLM's action prompt should carry the sandboxkit factory's execution_instructions"
            )


# -- other code-running modules and the sandbox dspy facade -----------------------------------
def digit_sum(n: int) -> int:
    """Return the sum of the decimal digits of ``n``."""
    return sum(int(d) for d in str(abs(n)))


@pytest.mark.dspy_e2e
class CodeModuleScenarios(_SandboxFixture):
    """ProgramOfThought, CodeAct, Flex, and RLM code that builds predictors with ``import dspy``."""

    def test_program_of_thought(self, dspy_sandbox: DSPySandbox) -> None:
        style = dspy_sandbox.features.pot
        _require(style is not None, "ProgramOfThought taking an interpreter")

        def model(prompt: Prompt) -> dict[str, Any]:
            if "generated_code" in prompt.outputs:
                code = "import math\nvalue = math.factorial(10) + 7\nSUBMIT({'answer': str(value)})"
                return {"reasoning": "Compute it in code.", "generated_code": f"```python\n{code}\n```"}
            output = json.loads(prompt.inputs["code_output"])  # what the sandbox returned
            return {"reasoning": "Read the code output.", "answer": output["output"]["answer"]}

        lm = ScriptedLM(model)
        plug, cleanup = dspy_sandbox.plug(style)
        try:
            with _quiet():
                pot = dspy.ProgramOfThought("question -> answer", **plug)
            with _context(lm):
                result = pot(question="What is 10 factorial plus 7?")
        finally:
            cleanup()
        assert result.answer == str(3628800 + 7)
        assert [c.outputs for c in lm.calls] == [["reasoning", "generated_code"], ["reasoning", "answer"]]

    def test_code_act(self, dspy_sandbox: DSPySandbox) -> None:
        style = dspy_sandbox.features.codeact
        _require(style is not None, "CodeAct taking an interpreter")
        from dspy.predict.code_act import CodeAct

        def model(prompt: Prompt) -> dict[str, Any]:
            if "generated_code" in prompt.outputs:
                if "code_output_0" not in prompt.inputs.get("trajectory", ""):
                    code = "n = 2 ** 100\nprint(digit_sum(n))"
                    return {"generated_code": f"```python\n{code}\n```", "finished": False}
                return {"generated_code": "```python\nprint(n % 97)\n```", "finished": True}
            # the extractor sees the trajectory as one section per step: code_output_<i> holds what the code printed
            outputs = re.findall(r'code_output_\d+ ## \]\]\n"(\d+)', prompt.text)
            return {"reasoning": "Use the printed values.", "answer": "/".join(outputs)}

        lm = ScriptedLM(model)
        plug, cleanup = dspy_sandbox.plug(style)
        try:
            with _quiet():
                act = CodeAct("question -> answer", tools=[digit_sum], max_iters=3, **plug)
            with _context(lm):
                result = act(question="Digit sum of 2**100, and 2**100 mod 97?")
        finally:
            cleanup()
        trajectory = result.trajectory
        assert json.loads(trajectory["code_output_0"]).strip() == str(digit_sum(2 ** 100))
        assert json.loads(trajectory["code_output_1"]).strip() == str(2 ** 100 % 97)
        assert result.answer == f"{digit_sum(2 ** 100)}/{2 ** 100 % 97}"

    def test_flex_baseline(self, dspy_sandbox: DSPySandbox) -> None:
        features = dspy_sandbox.features
        _require(features.flex, "dspy.Flex")
        lm = ScriptedLM(lambda prompt: {"answer": f"host heard: {prompt.inputs['question']}"})
        factory = dspy_sandbox.factory()
        with _quiet():
            flex = dspy.Flex("question -> answer", interpreter_factory=factory)
        with _context(lm):
            result = flex(question="ping from the test")
        assert result.answer == "host heard: ping from the test"
        assert len(lm.calls) == 1
        assert_all_shut_down(factory.made)

    def test_flex_custom_module_with_tool(self, dspy_sandbox: DSPySandbox) -> None:
        _require(dspy_sandbox.features.flex, "dspy.Flex")
        seen: list[str] = []

        def count_words(text: str) -> int:
            """Number of whitespace-separated words in ``text``."""
            seen.append(text)
            return len(text.split())

        module_src = (
            "class Reverser(dspy.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.describe = dspy.Predict('text -> description')\n"
            "\n"
            "    def forward(self, question):\n"
            "        words = question.split()\n"
            "        flipped = ' '.join(reversed(words))\n"
            "        described = self.describe(text=flipped)\n"
            "        n = count_words(question)\n"
            "        return dspy.Prediction(answer=described.description.upper() + ' / ' + str(n))\n"
        )
        lm = ScriptedLM(lambda prompt: {"description": f"seen {prompt.inputs['text']}"})
        factory = dspy_sandbox.factory()
        with _quiet():
            flex = dspy.Flex("question -> answer", tools=[count_words], interpreter_factory=factory)
            flex.load_state({"module_src": module_src})
        with _context(lm):
            result = flex(question="alpha beta gamma")
        assert result.answer == "SEEN GAMMA BETA ALPHA / 3"
        assert seen == ["alpha beta gamma"]
        assert [c.inputs.get("text") for c in lm.calls] == ["gamma beta alpha"]
        assert_all_shut_down(factory.made)

    def test_rlm_sandbox_dspy_facade(self, dspy_sandbox: DSPySandbox) -> None:
        _require(dspy_sandbox.features.facade, "sandbox dspy facade (import dspy inside RLM code)")

        def sub_model(prompt: Prompt) -> dict[str, Any]:
            reply = {"a": f"host answered {prompt.inputs['q']}"}
            if "reasoning" in prompt.outputs:
                reply = {"reasoning": "Thinking on the host.", **reply}
            return reply

        sub_lm = ScriptedLM(sub_model)
        lm = DummyLM([
            step("Build a predictor inside the sandbox.",
                 "import dspy\np = dspy.Predict('q -> a')\nfirst = p(q='hi').a\nprint(first)"),
            step("A sandbox module with a chain-of-thought predictor.",
                 "class Asker(dspy.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.cot = dspy.ChainOfThought('q -> a')\n\n    def forward(self, q):\n"
                 "        return self.cot(q=q)\n\nsecond = Asker()(q=first.upper())\nprint(second.a)"),
            step("Submit both answers.", "SUBMIT(answer=first + ' | ' + second.a)"),
        ])
        with dspy_sandbox.rlm("question -> answer", max_iters=5, sub_lm=sub_lm) as rlm, _context(lm):
            result = rlm(question="Ask the host twice.")

        assert result.trajectory[0]["output"].strip() == "host answered hi", _steps(result)
        assert result.trajectory[1]["output"].strip() == "host answered HOST ANSWERED HI"
        assert result.answer == "host answered hi | host answered HOST ANSWERED HI"
        assert [c.inputs.get("q") for c in sub_lm.calls] == ["hi", "HOST ANSWERED HI"]


class _RecordingCallback(BaseCallback):
    """A DSPy callback that records every interpreter event as (operation, phase, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()
        self._calls: dict[str, str] = {}

    def _record(self, operation: str, phase: str, call_id: str, detail: Any) -> None:
        with self._lock:
            if phase == "start":
                self._calls[call_id] = operation
            elif self._calls.pop(call_id, None) != operation:
                detail = ("unmatched end", detail)
            self.events.append((operation, phase, detail))

    def on_interpreter_startup_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._record("startup", "start", call_id, None)

    def on_interpreter_startup_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._record("startup", "end", call_id, exception)

    def on_interpreter_execute_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._record("execute", "start", call_id, inputs.get("code"))

    def on_interpreter_execute_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._record("execute", "end", call_id, exception if exception is not None else outputs)

    def on_interpreter_tool_call_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._record("tool_call", "start", call_id, (inputs.get("tool_name"), inputs.get("args"), inputs.get("kwargs")))

    def on_interpreter_tool_call_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._record("tool_call", "end", call_id, exception if exception is not None else outputs)

    def on_interpreter_shutdown_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._record("shutdown", "start", call_id, None)

    def on_interpreter_shutdown_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        self._record("shutdown", "end", call_id, exception)

    def of(self, operation: str, phase: str) -> list[Any]:
        return [detail for op, ph, detail in self.events if (op, ph) == (operation, phase)]


class CallbackScenarios(_SandboxFixture):
    """DSPy's interpreter callbacks (``on_interpreter_*``) fire as for DSPy's own interpreters."""

    @staticmethod
    def _needs_interpreter_callbacks() -> None:
        if not hasattr(BaseCallback, "on_interpreter_execute_start"):
            pytest.skip(f"DSPy {dspy.__version__} has no interpreter callbacks")

    def test_instance_callbacks_fire_for_every_operation(self, dspy_sandbox: DSPySandbox) -> None:
        self._needs_interpreter_callbacks()
        recorder = _RecordingCallback()
        interpreter = dspy_sandbox.interpreter()
        interpreter.callbacks = [recorder]
        interpreter.tools["shout"] = lambda text: text.upper()
        interpreter.start()
        assert interpreter.execute("shout('hi')") == "HI"
        with pytest.raises(CodeExecutionError):
            interpreter.execute("1 / 0")
        interpreter.shutdown()
        assert [(op, ph) for op, ph, _ in recorder.events] == [
            ("startup", "start"), ("startup", "end"),
            ("execute", "start"), ("tool_call", "start"), ("tool_call", "end"), ("execute", "end"),
            ("execute", "start"), ("execute", "end"),
            ("shutdown", "start"), ("shutdown", "end"),
        ], recorder.events
        assert recorder.of("execute", "start") == ["shout('hi')", "1 / 0"]
        assert recorder.of("tool_call", "start") == [("shout", ["hi"], {})]
        assert recorder.of("tool_call", "end") == ["HI"]
        ended = recorder.of("execute", "end")
        assert ended[0] == "HI" and isinstance(ended[1], CodeExecutionError)
        assert all(detail is None or "unmatched" not in str(detail) for detail in recorder.of("shutdown", "end"))

    def test_global_callbacks_fire_inside_rlm(self, dspy_sandbox: DSPySandbox) -> None:
        self._needs_interpreter_callbacks()
        recorder = _RecordingCallback()

        def lookup(key: str) -> str:
            """Look a word up on the host."""
            return {"alpha": "first"}.get(key, "unknown")

        lm = DummyLM([
            step("Ask the host tool.", "found = lookup('alpha')\nprint(found)"),
            step("Submit it.", "SUBMIT(answer=found)"),
        ])
        with dspy_sandbox.rlm("question -> answer", max_iters=4, tools=[lookup]) as rlm, \
                _context(lm, callbacks=[recorder]):
            result = rlm(question="What does alpha mean?")
        assert result.answer == "first", _steps(result)
        executes = recorder.of("execute", "start")
        assert any("lookup('alpha')" in code for code in executes), recorder.events
        assert ("lookup", ["alpha"], {}) in recorder.of("tool_call", "start"), recorder.events
        assert "first" in recorder.of("tool_call", "end")
        assert not any("unmatched" in str(detail) for _, _, detail in recorder.events), recorder.events


class DSPySuite(RLMScenarios, RLMPluggingStyles, CodeModuleScenarios, CallbackScenarios):
    """All DSPy end-to-end scenarios; subclass it as ``Test...`` with ``backend = "<name>"``."""
