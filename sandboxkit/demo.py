"""``sandboxkit demo``: DSPy's RLM on two tasks, the model's code running in a sandboxkit sandbox.

Tasks:

* ``fibonacci`` -- "What are the first 12 Fibonacci numbers? Return as comma-separated."
* ``document`` -- a long (100+ KB) generated handbook of a fictional framework stays in the sandbox;
  the model's code finds the module and optimizer reference entries with ``re`` and sends the
  design-principles section to ``llm_query``.

With ``DSPY_LM_MODEL`` and an API key (``DSPY_LLM_API_KEY`` or ``DSPY_LM_API_KEY``) in the
environment, a real LM writes the code (``DSPY_LM_API_BASE`` and ``DSPY_LM_MAX_TOKENS`` are
optional). Otherwise a scripted LM (``dspy.utils.DummyLM``) supplies pre-written steps: their code
still runs in the sandbox, and the answers it submits are variables that code computed.

Works with DSPy >= 3.3 (``RLM(interpreter_factory=...)``) and DSPy 3.1 (``RLM(interpreter=...)``).
"""

from __future__ import annotations

import inspect
import os
import random
import re
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TextIO

__all__ = [
    "FIBONACCI_QUESTION",
    "TASK_NAMES",
    "Catalog",
    "LMChoice",
    "ScriptedSubLM",
    "build_document",
    "choose_lm",
    "fibonacci_numbers",
    "run_demo",
]

TASK_NAMES = ("fibonacci", "document")
FIBONACCI_QUESTION = "What are the first 12 Fibonacci numbers? Return as comma-separated."
DOCUMENT_QUERY = (
    "List every module and every optimizer documented in the handbook, and summarize its design principles."
)

MODEL_ENV = "DSPY_LM_MODEL"
KEY_ENVS = ("DSPY_LLM_API_KEY", "DSPY_LM_API_KEY")
BASE_ENV = "DSPY_LM_API_BASE"
MAX_TOKENS_ENV = "DSPY_LM_MAX_TOKENS"

_CODE_LINES_SHOWN = 14
_OUTPUT_LINES_SHOWN = 8
_LINE_WIDTH = 110


# -- the tasks' ground truth -------------------------------------------------------------------
def fibonacci_numbers(count: int) -> list[int]:
    """The first ``count`` Fibonacci numbers, starting 0, 1."""
    numbers: list[int] = []
    a, b = 0, 1
    for _ in range(count):
        numbers.append(a)
        a, b = b, a + b
    return numbers


@dataclass(frozen=True)
class Catalog:
    """The generated handbook and what is documented in it."""

    text: str
    modules: tuple[str, ...]
    optimizers: tuple[str, ...]
    principles: tuple[str, ...]


_MODULES = (
    "SketchThenSolve", "PassageRanker", "ToolLoop", "SelfCritique", "MajorityVote", "Summarizer",
    "TableReader", "PlanExecute", "CodeSolver", "FactChecker", "Translator", "QueryRouter",
)
_OPTIMIZERS = (
    "GreedyDemoSearch", "InstructionAnnealer", "BanditPromptTuner", "EnsembleDistiller",
    "FewShotHarvester", "EvolvePrompts", "BeamInstructionSearch", "WeightFinetuner",
)
_UTILITIES = ("configure", "Dataset", "Metric", "ResponseCache", "Tracer", "Settings", "Evaluate")
_PRINCIPLES = (
    ("Programs over prompts", "behaviour is declared as typed signatures, and prompts are generated from them."),
    ("Composable modules", "every module can be nested inside another and called like a function."),
    ("Optimization is separate from definition", "optimizers tune demonstrations, instructions or "
     "weights without touching program code."),
    ("Metrics drive everything", "a user-written metric is the single source of truth for quality."),
    ("Inspectable execution", "every call records a trace that can be replayed and examined."),
)
_TOPICS = (
    "installing the framework", "signatures and fields", "building a first program", "working with datasets",
    "writing metrics", "caching and reproducibility", "retrieval pipelines", "agents and tools",
    "structured outputs", "evaluation at scale", "deployment", "debugging with traces", "cost control",
    "multilingual programs", "long inputs", "streaming", "asynchronous execution", "saving and loading",
    "migrating from hand-written prompts", "frequently asked questions",
)
_WORDS = (
    "program pipeline signature field input output example trace metric score budget latency cache "
    "prompt instruction demonstration batch worker thread request response schema type value default "
    "module optimizer candidate trial round seed sample split validation training evaluation report "
    "adapter format parser retry limit timeout context window token cost model provider setting"
).split()


def _sentence(rng: random.Random, mention: str | None = None) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(9, 18))]
    if mention is not None:
        words.insert(rng.randint(1, len(words) - 1), mention)
    return (" ".join(words)).capitalize() + "."


def _paragraph(rng: random.Random, mentions: Sequence[str] = ()) -> str:
    sentences = [_sentence(rng) for _ in range(rng.randint(4, 8))]
    for name in mentions:
        sentences.insert(rng.randint(0, len(sentences)), _sentence(rng, f"`ef.{name}`"))
    return " ".join(sentences)


def _reference_entry(rng: random.Random, name: str, kind: str) -> str:
    return (
        f"### ef.{name}\nKind: {kind}\n"
        f"Since: 0.{rng.randint(1, 9)}\n\n{_paragraph(rng)}\n\n"
        f"```\nprogram = ef.{name}(...)\n```\n"
    )


def build_document(seed: int = 20240611, min_chars: int = 110_000) -> Catalog:
    """A deterministic handbook of a fictional framework (package ``ef``), at least ``min_chars`` long.

    Reference entries (``### ef.Name`` then ``Kind: module|optimizer|utility``) are scattered one or
    two per chapter among generated prose, which also mentions names in passing; the design
    principles are a bulleted section near the start.
    """
    rng = random.Random(seed)
    entries = [(name, "module") for name in _MODULES] + [(name, "optimizer") for name in _OPTIMIZERS]
    entries += [(name, "utility") for name in _UTILITIES]
    rng.shuffle(entries)
    every_name = [name for name, _ in entries]
    parts = [
        "# The ef Framework Handbook\n",
        "This handbook documents ef, a fictional framework for building language-model programs. "
        "It is generated for the sandboxkit demo.\n",
        "## Design principles\n",
        "\n".join(f"- {title}: {text}" for title, text in _PRINCIPLES) + "\n",
    ]
    chapter = 0
    while entries or sum(len(part) for part in parts) < min_chars:
        chapter += 1
        topic = _TOPICS[(chapter - 1) % len(_TOPICS)]
        parts.append(f"## Chapter {chapter}: {topic}\n")
        for _ in range(rng.randint(3, 6)):
            mentions = rng.sample(every_name, rng.randint(0, 2))
            parts.append(_paragraph(rng, mentions) + "\n")
        for _ in range(min(len(entries), rng.randint(1, 2))):
            name, kind = entries.pop()
            parts.append(_reference_entry(rng, name, kind))
    return Catalog(
        text="\n".join(parts),
        modules=tuple(sorted(_MODULES)),
        optimizers=tuple(sorted(_OPTIMIZERS)),
        principles=tuple(title for title, _ in _PRINCIPLES),
    )


# -- the scripted LM ---------------------------------------------------------------------------
def _step(reasoning: str, code: str) -> dict[str, str]:
    return {"reasoning": reasoning, "code": "```python\n" + textwrap.dedent(code).strip() + "\n```"}


def _fibonacci_script() -> list[dict[str, str]]:
    return [
        _step(
            "Compute the sequence in code rather than from memory, starting from 0 and 1, and look at it.",
            """
            def fibonacci(count):
                numbers = [0, 1]
                while len(numbers) < count:
                    numbers.append(numbers[-1] + numbers[-2])
                return numbers[:count]

            first_12 = fibonacci(12)
            print(len(first_12), "numbers:", first_12)
            """,
        ),
        _step(
            "The list printed above has 12 numbers starting 0, 1. Join it with commas and submit it.",
            """
            answer = ", ".join(str(n) for n in first_12)
            print(answer)
            SUBMIT(answer=answer)
            """,
        ),
    ]


def _document_script() -> list[dict[str, str]]:
    return [
        _step(
            "The handbook is long, so explore its size and chapter headings before reading anything.",
            """
            import re
            print(f"{len(docs):,} characters, {docs.count(chr(10)):,} lines")
            headings = re.findall(r"^## (.+)$", docs, flags=re.MULTILINE)
            print(len(headings), "sections, e.g.", headings[:4])
            print(docs[:300])
            """,
        ),
        _step(
            "Reference entries look like '### ef.Name' followed by 'Kind: ...'. Collect them with a regex, "
            "split by kind, and ask the sub-LM to list the design principles from that section only.",
            """
            entries = re.findall(r"^### ef\\.(\\w+)\\nKind: (\\w+)", docs, flags=re.MULTILINE)
            modules = sorted({name for name, kind in entries if kind == "module"})
            optimizers = sorted({name for name, kind in entries if kind == "optimizer"})
            print(len(entries), "reference entries")
            print("modules:", modules)
            print("optimizers:", optimizers)
            start = docs.index("## Design principles")
            section = docs[start:docs.index("\\n## ", start + 1)]
            prompt = "List the design principles named in this excerpt, separated by semicolons:\\n\\n"
            principles = llm_query(prompt + section)
            print("principles:", principles)
            """,
        ),
        _step(
            "Found the modules and optimizers and a summary of the principles; submit the computed values.",
            """
            SUBMIT(modules=modules, optimizers=optimizers, design_principles=principles)
            """,
        ),
    ]


class ScriptedSubLM:
    """The scripted stand-in for the sub-LM behind ``llm_query``: it answers a prompt with the titles
    of the ``- Title: text`` bullet lines found in it, joined by semicolons."""

    model = "scripted-sub-lm"

    def __call__(self, prompt: str | None = None, messages: Any = None, **_: Any) -> list[str]:
        text = prompt if isinstance(prompt, str) else str(messages or "")
        titles = re.findall(r"^- ([^:\n]+):", text, flags=re.MULTILINE)
        return ["; ".join(titles) if titles else "(no bulleted items found in the prompt)"]


# -- choosing the LM ---------------------------------------------------------------------------
@dataclass
class LMChoice:
    """Which LM the demo uses; ``make_lm(task)`` builds a fresh LM for one task."""

    scripted: bool
    description: str
    make_lm: Callable[[str], Any]
    sub_lm: Any = None
    notes: list[str] = field(default_factory=list)


def choose_lm(env: Mapping[str, str]) -> LMChoice:
    """A real ``dspy.LM`` when ``DSPY_LM_MODEL`` and a key are set, else the scripted LM.

    Raises ``ValueError`` for an unparseable ``DSPY_LM_MAX_TOKENS``.
    """
    import dspy

    model = env.get(MODEL_ENV, "").strip()
    key = next((env[name] for name in KEY_ENVS if env.get(name)), "")
    if model and key:
        kwargs: dict[str, Any] = {"api_key": key}
        if env.get(BASE_ENV):
            kwargs["api_base"] = env[BASE_ENV]
        if env.get(MAX_TOKENS_ENV):
            try:
                kwargs["max_tokens"] = int(env[MAX_TOKENS_ENV])
            except ValueError:
                raise ValueError(f"{MAX_TOKENS_ENV} must be an integer, got {env[MAX_TOKENS_ENV]!r}") from None
        lm = dspy.LM(model, **kwargs)
        # sub_lm is given explicitly: llm_query runs on a host thread of its own, so it should not
        # depend on dspy.context() reaching it.
        return LMChoice(False, f"real LM {model!r}", lambda _task: lm, sub_lm=lm)

    notes = []
    if model and not key:
        notes.append(f"{MODEL_ENV} is set but no API key is ({' or '.join(KEY_ENVS)}), so the scripted LM is used.")
    scripts = {"fibonacci": _fibonacci_script, "document": _document_script}

    def make_scripted(task: str) -> Any:
        from dspy.utils import DummyLM

        return DummyLM(scripts[task]())

    return LMChoice(True, "scripted LM", make_scripted, sub_lm=ScriptedSubLM(), notes=notes)


# -- running RLM on either DSPy generation -----------------------------------------------------
def _rlm_accepts_factory() -> bool:
    import dspy

    return "interpreter_factory" in inspect.signature(dspy.RLM.__init__).parameters


def _run_rlm(signature: Any, inputs: dict[str, Any], *, backend: str | None, options: dict[str, str],
             lm: Any, sub_lm: Any, max_iters: int, max_llm_calls: int) -> tuple[Any, str]:
    """Run one RLM call on a sandboxkit backend; return (prediction, backend name)."""
    import dspy

    from sandboxkit.api import factory, interpreter as make_interpreter

    with dspy.context(lm=lm):
        if _rlm_accepts_factory():  # DSPy >= 3.3: RLM creates and shuts down the interpreter
            interpreter_factory = factory(backend, **options)
            rlm = dspy.RLM(signature, max_iters=max_iters, max_llm_calls=max_llm_calls, sub_lm=sub_lm,
                           interpreter_factory=interpreter_factory)
            return rlm(**inputs), interpreter_factory.backend_name
        interpreter = make_interpreter(backend, **options)  # DSPy 3.1: we own the interpreter
        try:
            rlm = dspy.RLM(signature, max_iterations=max_iters, max_llm_calls=max_llm_calls, sub_lm=sub_lm,
                           interpreter=interpreter)
            return rlm(**inputs), interpreter.backend_name
        finally:
            interpreter.shutdown()


def _document_signature() -> Any:
    import dspy

    class ExtractCatalog(dspy.Signature):
        """Extract the catalog of a framework from its handbook."""

        docs: str = dspy.InputField(desc="the full handbook text")
        query: str = dspy.InputField(desc="what to extract")
        modules: list[str] = dspy.OutputField(desc="names of the documented modules")
        optimizers: list[str] = dspy.OutputField(desc="names of the documented optimizers")
        design_principles: str = dspy.OutputField(desc="the framework's design principles, briefly")

    return ExtractCatalog


# -- checking and printing ---------------------------------------------------------------------
def _check_fibonacci(answer: Any) -> tuple[bool, str]:
    numbers = [int(n) for n in re.findall(r"-?\d+", str(answer))]
    expected = fibonacci_numbers(12)
    if numbers in (expected, expected[1:] + [expected[-1] + expected[-2]]):
        return True, "the 12 numbers are correct"
    return False, f"expected {', '.join(map(str, expected))}"


def _names(values: Any) -> set[str]:
    if isinstance(values, str):
        values = re.split(r"[,\n;]", values)
    names = set()
    for value in values or ():
        name = str(value).strip().strip("`'\" ")
        name = name.split(".")[-1].removesuffix("()")
        if name:
            names.add(name)
    return names


def _check_document(prediction: Any, catalog: Catalog) -> tuple[bool, str]:
    problems = []
    for label, expected in (("modules", catalog.modules), ("optimizers", catalog.optimizers)):
        got = _names(getattr(prediction, label, None))
        missing = sorted(set(expected) - got)
        extra = sorted(got - set(expected))
        if missing:
            problems.append(f"{label}: missing {', '.join(missing)}")
        if extra:
            problems.append(f"{label}: not in the handbook: {', '.join(extra)}")
    if problems:
        return False, "; ".join(problems)
    return True, f"all {len(catalog.modules)} modules and {len(catalog.optimizers)} optimizers found, none extra"


def _clip(text: str, max_lines: int) -> list[str]:
    lines = str(text).rstrip("\n").splitlines() or [""]
    shown = [line if len(line) <= _LINE_WIDTH else line[: _LINE_WIDTH - 3] + "..." for line in lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"... ({len(lines) - max_lines} more lines)")
    return shown


def _print_trajectory(trajectory: Sequence[dict[str, Any]], out: TextIO) -> None:
    for number, entry in enumerate(trajectory, start=1):
        print(f"  step {number}:", file=out)
        print("    code:", file=out)
        for line in _clip(entry.get("code", ""), _CODE_LINES_SHOWN):
            print(f"      | {line}", file=out)
        print("    output:", file=out)
        for line in _clip(entry.get("output", ""), _OUTPUT_LINES_SHOWN):
            print(f"      > {line}", file=out)


# -- the demo ----------------------------------------------------------------------------------
def _run_task(task: str, choice: LMChoice, backend: str | None, options: dict[str, str],
              max_iters: int | None, out: TextIO) -> bool:
    if task == "fibonacci":
        print(f"question: {FIBONACCI_QUESTION}", file=out)
        signature: Any = "question -> answer"
        inputs: dict[str, Any] = {"question": FIBONACCI_QUESTION}
        iters, calls = max_iters or 15, 30
    else:
        catalog = build_document()
        print(f"document: {len(catalog.text):,} characters (generated handbook, kept inside the sandbox)", file=out)
        print(f"query: {DOCUMENT_QUERY}", file=out)
        signature = _document_signature()
        inputs = {"docs": catalog.text, "query": DOCUMENT_QUERY}
        iters, calls = max_iters or 25, 50
    out.flush()
    prediction, backend_name = _run_rlm(signature, inputs, backend=backend, options=options,
                                        lm=choice.make_lm(task), sub_lm=choice.sub_lm,
                                        max_iters=iters, max_llm_calls=calls)
    trajectory = list(getattr(prediction, "trajectory", None) or [])
    print(f"backend: {backend_name}", file=out)
    print(f"steps: {len(trajectory)}", file=out)
    _print_trajectory(trajectory, out)
    if task == "fibonacci":
        print(f"answer: {prediction.answer}", file=out)
        ok, detail = _check_fibonacci(prediction.answer)
    else:
        print(f"modules: {', '.join(map(str, prediction.modules or []))}", file=out)
        print(f"optimizers: {', '.join(map(str, prediction.optimizers or []))}", file=out)
        print(f"design principles: {prediction.design_principles}", file=out)
        ok, detail = _check_document(prediction, catalog)
    print(f"result: {'OK' if ok else 'FAILED'} ({detail})", file=out)
    return ok


def run_demo(backend: str | None = None, options: dict[str, str] | None = None, *,
             tasks: Sequence[str] = TASK_NAMES, max_iters: int | None = None,
             out: TextIO | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the demo tasks; return 0 when all succeed, 1 when one fails, 2 for a configuration error."""
    out = out or sys.stdout
    options = dict(options or {})
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from sandboxkit.api import factory
    from sandboxkit.errors import SandboxkitError

    try:
        factory(backend, **options)  # fail early on an unknown backend or a bad option
        choice = choose_lm(os.environ if env is None else env)
    except (SandboxkitError, ValueError) as exc:
        print(f"sandboxkit: error: {exc}", file=sys.stderr)
        return 2

    if choice.scripted:
        print("sandboxkit demo: using a SCRIPTED LM -- the model's steps are pre-written, but their code runs "
              "in the sandbox and the answers are the values that code computes.", file=out)
        print(f"  To use a real LM, set {MODEL_ENV} (a model name as dspy.LM takes it, e.g. provider/model-name) and "
              f"{KEY_ENVS[0]} (or {KEY_ENVS[1]}); {BASE_ENV} and {MAX_TOKENS_ENV} are optional.", file=out)
        for note in choice.notes:
            print(f"  Note: {note}", file=out)
    else:
        print(f"sandboxkit demo: using the {choice.description} (from {MODEL_ENV}).", file=out)
    import dspy

    wiring = "interpreter_factory=sandboxkit.factory(...)" if _rlm_accepts_factory() else \
        "interpreter=sandboxkit.interpreter(...)"
    print(f"DSPy {dspy.__version__}; RLM is given {wiring}", file=out)

    failed = []
    for number, task in enumerate(tasks, start=1):
        print(f"\n=== task {number}/{len(tasks)}: {task} ===", file=out)
        try:
            ok = _run_task(task, choice, backend, options, max_iters, out)
        except Exception as exc:  # report and go on with the next task
            print(f"result: FAILED ({type(exc).__name__}: {exc})", file=out)
            if os.environ.get("SANDBOXKIT_DEMO_TRACEBACK"):
                traceback.print_exc()
            ok = False
        out.flush()
        if not ok:
            failed.append(task)
    print(f"\n{len(tasks) - len(failed)}/{len(tasks)} tasks succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=out)
    return 1 if failed else 0
