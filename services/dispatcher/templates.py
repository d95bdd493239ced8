"""User templates, rendered in jinja2's immutable sandbox.

A template is a string, or (request bodies, MCP arguments) a JSON object whose
string leaves are templates. The context is the job's event fields, the trigger
(id, name), the matcher's ``explain`` block and the job (id, attempt); undefined
names are errors (StrictUndefined), so a typo fails the job clearly instead of
sending an empty value. Every failure is a :class:`TemplateRenderError`: the job is
not retried (the same template and event fail the same way every time).
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.filters
import orjson
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.contract.jobs import ActionJob

#: Rendered output is capped: a template is not a way to build megabyte bodies.
MAX_RENDERED_CHARS = 262_144
#: Longest string or list a ``*`` / ``**`` in a template may produce.
MAX_PRODUCT = 65_536
#: Items all ``range()`` calls of one rendering may produce together.
MAX_RANGE_ITEMS = 100_000
#: CPU time a template with statements ({% for %}, macros) may take to render.
RENDER_SECONDS = 0.25


class TemplateRenderError(Exception):
    """A template does not compile or render; the message says where and why."""


def context_of(
    job: ActionJob, *, event: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """The variables a template sees (``event``: the job's event already dumped)."""
    return {
        "event": job.event.model_dump(mode="json") if event is None else event,
        "trigger": {"id": job.trigger_id, "name": job.trigger_name},
        "explain": job.explain,
        "job": {"id": job.job_id, "attempt": job.attempt},
        **extra,
    }


def _tojson(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class _Budget:
    """What one rendering may still spend: range() items, and a deadline."""

    __slots__ = ("deadline", "range_items")

    def __init__(self) -> None:
        self.range_items = MAX_RANGE_ITEMS
        self.deadline = 0.0


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")
#: Characters one job's templates may still produce together (all the leaves of an
#: object template, the URL and every header): see :func:`one_job`.
_job_chars: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_job_chars")


@contextlib.contextmanager
def one_job() -> Iterator[None]:
    """Every rendering inside shares one output budget of MAX_RENDERED_CHARS: a job's
    templates together produce no more than one template may."""
    token = _job_chars.set([MAX_RENDERED_CHARS])
    try:
        yield
    finally:
        _job_chars.reset(token)


def _bounded_range(*args: int) -> range:
    r = range(*args)
    budget = _budget.get(None)
    if budget is not None:
        budget.range_items -= len(r)
        if budget.range_items < 0:
            raise SecurityError(f"range() items exceed {MAX_RANGE_ITEMS} in one template")
    elif len(r) > MAX_RANGE_ITEMS:
        raise SecurityError(f"range() larger than {MAX_RANGE_ITEMS}")
    return r


_PERCENT_SPEC = re.compile(r"%[#0\- +]*(\d*)(?:\.(\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}:]*:([^{}]*)\}")


def _check_format(fmt: str) -> None:
    """Refuse a format string whose widths or precisions alone would exceed the
    output cap ("%0999999999d", "{:>999999999}"), before it is applied."""
    numbers = [n for m in _PERCENT_SPEC.findall(fmt) for n in m if n]
    numbers += [n for spec in _BRACE_SPEC.findall(fmt) for n in re.findall(r"\d+", spec)]
    if any(len(n) > 6 and int(n) > MAX_RENDERED_CHARS for n in numbers):
        raise SecurityError(f"a format width beyond {MAX_RENDERED_CHARS} characters")


def _checked_size(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        raise SecurityError(f"{what} would make more than {MAX_RENDERED_CHARS} characters")


def _center(value: Any, width: int = 80) -> str:
    _checked_size(width, "center")
    return str(value).center(width)


def _indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(value)
    pad = width if isinstance(width, str) else " " * min(max(width, 0), MAX_RENDERED_CHARS + 1)
    _checked_size(len(text) + (text.count("\n") + 1) * len(pad), "indent")
    return str(jinja2.filters.do_indent(text, pad, first, blank))


def _replace(eval_ctx: Any, value: Any, old: str, new: str, count: int | None = None) -> str:
    text = str(value)
    times = text.count(old) if count is None else min(count, text.count(old))
    _checked_size(len(text) + times * max(0, len(new) - len(old)), "replace")
    return str(jinja2.filters.do_replace(eval_ctx, text, old, new, count))


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_format(str(value))
    return str(jinja2.filters.do_format(value, *args, **kwargs))


_replace_filter = jinja2.pass_eval_context(_replace)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``*``, ``**`` and ``%`` checked before they compute
    (a gigabyte string, a huge power, a huge format width), the filters that grow
    text (center, indent, replace, format) and ``str.format`` checked likewise, and
    range() counted per rendering."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(str(value.__self__))
        return wrapped

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%":
            if isinstance(left, str):
                _check_format(left)
        elif operator == "**":
            if isinstance(right, int) and isinstance(left, int) and abs(right) > 256:
                raise SecurityError("exponent too large in a template")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_PRODUCT
                ):
                    raise SecurityError(f"'*' would make more than {MAX_PRODUCT} items")
        return super().call_binop(context, operator, left, right)


def _environment(finalize: Callable[[Any], Any] | None) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=finalize,
        auto_reload=False,
    )
    env.filters["tojson"] = _tojson
    env.filters["center"] = _center
    env.filters["indent"] = _indent
    env.filters["replace"] = _replace_filter
    env.filters["format"] = _format
    env.globals["range"] = _bounded_range
    env.globals.pop("lipsum", None)  # text generation: not a message's business
    return env


# --- escaping for Telegram's parse modes: applied to every {{ expression }} output,
# never to the template's own text (which holds the markup the user wants).

_MDV2_SPECIAL = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")
_MD_SPECIAL = re.compile(r"([_*`\[])")


def escape_markdown_v2(text: str) -> str:
    """Escape every character MarkdownV2 reserves (Bot API, "MarkdownV2 style")."""
    return _MDV2_SPECIAL.sub(r"\\\1", text)


def escape_markdown(text: str) -> str:
    """Escape the legacy Markdown entity characters."""
    return _MD_SPECIAL.sub(r"\\\1", text)


_ESCAPES: dict[str | None, Callable[[str], str] | None] = {
    None: None,
    "MarkdownV2": escape_markdown_v2,
    "Markdown": escape_markdown,
    "HTML": lambda s: html.escape(s, quote=True),
}


def _finalizer(escape: Callable[[str], str] | None) -> Callable[[Any], Any] | None:
    if escape is None:
        return None

    def finalize(value: Any) -> Any:
        return escape("" if value is None else str(value))

    return finalize


@lru_cache(maxsize=8)
def _env(parse_mode: str | None) -> ImmutableSandboxedEnvironment:
    return _environment(_finalizer(_ESCAPES[parse_mode]))


@lru_cache(maxsize=4096)
def _compiled(parse_mode: str | None, source: str) -> jinja2.Template:
    return _env(parse_mode).from_string(source)


def _render(template: jinja2.Template, context: Mapping[str, Any], statements: bool) -> str:
    """Render with the output capped as it grows; a template with statements (loops,
    macros) also runs under a tracer that stops it after RENDER_SECONDS of work."""
    budget = _Budget()
    token = _budget.set(budget)
    previous = sys.gettrace()
    try:
        if statements:
            budget.deadline = time.thread_time() + RENDER_SECONDS
            sys.settrace(_tracer(budget))
        size = 0
        left = _job_chars.get(None)
        chunks: list[str] = []
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS or (left is not None and size > left[0]):
                raise TemplateRenderError(
                    f"rendered template exceeds {MAX_RENDERED_CHARS} characters"
                    + (" (all of the job's templates together)" if left is not None else "")
                )
            chunks.append(chunk)
        if left is not None:
            left[0] -= size
        return "".join(chunks)
    finally:
        if statements:
            sys.settrace(previous)
        _budget.reset(token)


class _TooSlowError(Exception):
    pass


def _tracer(budget: _Budget) -> Callable[..., Any]:
    steps = [0]

    def trace(_frame: Any, _event: str, _arg: Any) -> Any:
        steps[0] += 1
        if steps[0] % 1000 == 0 and time.thread_time() > budget.deadline:
            raise _TooSlowError
        return trace

    return trace


def render_text(source: str, context: Mapping[str, Any], *, parse_mode: str | None = None) -> str:
    """Render one template string; expression output is escaped for ``parse_mode``."""
    if "{" not in source:
        return source  # no expression, statement or comment: nothing to render
    try:
        out = _render(_compiled(parse_mode, source), context, "{%" in source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRenderError(
            f"template syntax error at line {exc.lineno}: {exc.message}"
        ) from None
    except jinja2.UndefinedError as exc:
        raise TemplateRenderError(f"template error: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateRenderError(f"template refused by the sandbox: {exc}") from None
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise TemplateRenderError(f"template error: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise TemplateRenderError("template error: recursion too deep") from None
    except MemoryError:
        raise TemplateRenderError("template error: out of memory") from None
    except _TooSlowError:
        raise TemplateRenderError(
            f"template took more than {RENDER_SECONDS:g}s of CPU to render"
        ) from None
    return out


def render_tree(template: Any, context: Mapping[str, Any], *, path: str = "") -> Any:
    """Render an object template: every string leaf, recursively (keys are kept)."""
    if isinstance(template, str):
        try:
            return render_text(template, context)
        except TemplateRenderError as exc:
            raise TemplateRenderError(f"{path or 'template'}: {exc}") from None
    if isinstance(template, dict):
        return {
            k: render_tree(v, context, path=f"{path}.{k}" if path else k)
            for k, v in template.items()
        }
    if isinstance(template, list):
        return [render_tree(v, context, path=f"{path}[{i}]") for i, v in enumerate(template)]
    return template


def render_json_object(
    template: str | dict[str, Any], context: Mapping[str, Any]
) -> dict[str, Any]:
    """A template that must produce a JSON object (MCP tool arguments): an object
    template is rendered leaf by leaf; a string template must render to a JSON object."""
    with one_job():
        return _json_object(template, context)


def _json_object(template: str | dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(template, dict):
        out = render_tree(template, context)
        assert isinstance(out, dict)
        return out
    text = render_text(template, context)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TemplateRenderError(f"arguments template did not render to JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TemplateRenderError("arguments template must render to a JSON object")
    return value
