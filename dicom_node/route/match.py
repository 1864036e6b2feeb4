"""Evaluate routing rules against one series' attributes and decide which rules fire.

The rules themselves (:mod:`dicom_node.route.rules`) are parsed and validated
once from ``config.yaml``; this module applies them. Every verdict carries a
human-readable reason because the same code serves two callers: the router,
which only needs :func:`fired_routes`, and ``dicom-node route --explain``,
which must tell an administrator *why* a series went (or did not go) somewhere
without them having to re-read the YAML and the DICOM header side by side.

Matching semantics
------------------
Attribute values are normalised to a list of strings, one per DICOM value
(``ImageType`` ``ORIGINAL\\PRIMARY`` becomes ``["ORIGINAL", "PRIMARY"]``),
each stripped of padding:

* scalar -- some value equals the expected one (case-sensitive); when both
  look like decimal numbers they are compared numerically, so ``5`` in YAML
  matches ``"5.000"`` from a DS attribute and ``"0005"`` from an IS one;
* list -- some value equals some listed value, with the scalar rule above;
* ``{regex: P}`` -- ``re.search(P, value)`` succeeds for some value, *or* for
  all values joined with a backslash (so a pattern can span values, e.g.
  ``ORIGINAL\\\\PRIMARY`` in YAML);
* ``{range: [LOW, HIGH]}`` -- some value is a number within the inclusive
  bounds (a null bound is open); a value that is not a number does not match;
* ``{present: true}`` -- the attribute exists with at least one non-empty value;
  ``{present: false}`` -- it is absent or empty.

An attribute that is absent or empty fails every condition except
``present: false``. The calling AE title (stripped) must be one of
``calling_ae`` when a rule names any; when it is unknown -- explaining files
on disk, not a live association -- such a rule cannot be evaluated and counts
as not matched, and its outcome says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dicom_node.route.derived import DERIVED
from dicom_node.route.rules import (
    MatchValue,
    PresenceMatch,
    RangeMatch,
    RegexMatch,
    Requirement,
    Route,
    Scalar,
    _UnknownMatch,
)
from imaging.values import Attributes, _text, attribute_values

__all__ = [
    "Attributes",
    "Condition",
    "RuleOutcome",
    "attribute_values",
    "evaluate",
    "missing_series",
    "select",
]

CALLING_AE = "calling AE"
"""The pseudo-keyword of the condition on the calling AE title."""

# DICOM decimal strings (DS, IS) and YAML numbers; deliberately narrower than
# float() so that "nan", "inf" and "1_000" stay strings.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Condition:
    """The verdict on one condition of a rule.

    Attributes
    ----------
    keyword
        The DICOM keyword, or ``"calling AE"`` for the calling AE title condition.
    expected
        What the rule asks for, as text (``"one of ['CR', 'DX']"``).
    actual
        The value found, values joined with a backslash; ``None`` if the
        attribute is absent or the calling AE title is unknown.
    ok
        Whether the condition holds.
    reason
        A sentence an administrator can read without the YAML at hand.
    evaluable
        ``False`` when the condition could not be decided at all (a calling AE
        condition while explaining files from disk); ``ok`` is then ``False``.
    """

    keyword: str
    expected: str
    actual: str | None
    ok: bool
    reason: str
    evaluable: bool = True


@dataclass(frozen=True)
class RuleOutcome:
    """One rule's verdict for one series.

    :func:`evaluate` fills ``route``, ``matched`` and ``conditions``;
    :func:`select` also decides ``fired`` and rewrites ``reason`` to say why
    the rule fired or not, in the context of the other rules.

    Attributes
    ----------
    route
        The rule.
    matched
        Whether every condition holds. Computed even for rules that were not
        tried, so that explain can say "would have matched".
    conditions
        One per ``match`` entry, in the YAML's order, then the calling AE one.
    fired
        Whether the series goes to this rule's pipeline.
    reason
        Why it fired or not.
    tried
        ``False`` for rules after a final rule that fired.
    """

    route: Route
    matched: bool
    conditions: tuple[Condition, ...]
    fired: bool = False
    reason: str = ""
    tried: bool = True

    @property
    def evaluable(self) -> bool:
        """Whether every condition could be decided (see :attr:`Condition.evaluable`)."""
        return all(c.evaluable for c in self.conditions)

    @property
    def undecided(self) -> bool:
        """Not matched, but only for want of the calling AE title: it might match live."""
        return not self.matched and all(not c.evaluable for c in self.failures)

    @property
    def failures(self) -> tuple[Condition, ...]:
        """The conditions that do not hold."""
        return tuple(c for c in self.conditions if not c.ok)


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text) else None


def _equal(actual: str, expected: Scalar) -> bool:
    """Scalar equality: numeric when both sides are numbers, else exact text."""
    want = _text(expected)
    a, b = _number(actual), _number(want)
    if a is not None and b is not None:
        return a == b
    return actual == want


def _quote(text: str) -> str:
    # Not repr(): it would double the backslash between values.
    return f"'{text}'"


def _show(expected: Scalar) -> str:
    return _quote(expected) if isinstance(expected, str) else str(expected)


def _describe(spec: MatchValue) -> str:
    """What a match entry asks for, in words."""
    if isinstance(spec, list):
        return f"one of [{', '.join(_show(v) for v in spec)}]"
    if isinstance(spec, RegexMatch):
        return f"regex {spec.regex!r}"
    if isinstance(spec, RangeMatch):
        lo, hi = spec.range
        if lo is None:
            return f"<= {hi:g}"
        if hi is None:
            return f">= {lo:g}"
        return f"in [{lo:g}, {hi:g}]"
    if isinstance(spec, PresenceMatch):
        return "present" if spec.present else "absent or empty"
    if isinstance(spec, _UnknownMatch):
        raise _unvalidated()
    return _show(spec)


def _unvalidated() -> TypeError:
    # _UnknownMatch's validator always raises: a parsed rule never holds one
    return TypeError("a match mapping without regex, range or present cannot be evaluated")


def _check(keyword: str, spec: MatchValue, values: list[str] | None) -> Condition:
    """Decide one ``match`` entry against the attribute's values."""
    expected = _describe(spec)
    actual = None if values is None else "\\".join(values)
    state = "absent" if values is None else "empty"
    if isinstance(spec, PresenceMatch):
        if values:
            ok = spec.present
            reason = f"{keyword} is present ({_quote(actual or '')})"
            if not ok:
                reason += ", expected absent or empty"
        else:
            ok = not spec.present
            reason = f"{keyword} is {state}"
            if not ok:
                reason += ", expected present"
        return Condition(keyword, expected, actual, ok, reason)
    if not values:
        return Condition(keyword, expected, actual, False, f"{keyword} is {state}")

    shown = f"{keyword} is {_quote(actual or '')}"
    if isinstance(spec, RegexMatch):
        pattern = re.compile(spec.regex)
        ok = any(pattern.search(v) for v in values) or (
            len(values) > 1 and pattern.search(actual or "") is not None
        )
        verb = "matches" if ok else "does not match"
        return Condition(
            keyword,
            expected,
            actual,
            ok,
            f"{keyword} {_quote(actual or '')} {verb} regex {spec.regex!r}",
        )
    if isinstance(spec, RangeMatch):
        lo, hi = spec.range
        numbers = [n for n in map(_number, values) if n is not None]
        if not numbers:
            return Condition(keyword, expected, actual, False, f"{shown}, not a number")
        ok = any((lo is None or lo <= n) and (hi is None or n <= hi) for n in numbers)
        return Condition(
            keyword, expected, actual, ok, f"{shown}, {'' if ok else 'not '}{expected}"
        )
    if isinstance(spec, _UnknownMatch):
        raise _unvalidated()
    options = spec if isinstance(spec, list) else [spec]
    ok = any(_equal(v, want) for v in values for want in options)
    if not ok:
        return Condition(keyword, expected, actual, False, f"{shown}, not {expected}")
    return Condition(
        keyword, expected, actual, True, f"{shown}, {expected}" if isinstance(spec, list) else shown
    )


def _condition(keyword: str, spec: MatchValue, attrs: Attributes) -> Condition:
    """One ``match`` entry: a DICOM attribute, or a derived key with the reason of its value."""
    derived = DERIVED.get(keyword)
    if derived is None:
        return _check(keyword, spec, attribute_values(attrs, keyword))
    value, because = derived.decide(attrs)
    condition = _check(keyword, spec, [value])
    return replace(condition, reason=f"{condition.reason} ({because})")


def _check_calling_ae(allowed: list[str], calling_ae: str | None) -> Condition:
    stripped = [a.strip() for a in allowed]
    expected = f"one of [{', '.join(_quote(a) for a in stripped)}]"
    if calling_ae is None:
        return Condition(
            CALLING_AE,
            expected,
            None,
            False,
            f"calling AE title unknown (not a live association), rule needs {expected}",
            evaluable=False,
        )
    ae = calling_ae.strip()
    ok = ae in stripped
    reason = f"calling AE is {_quote(ae)}" + ("" if ok else f", not {expected}")
    return Condition(CALLING_AE, expected, ae, ok, reason)


def evaluate(route: Route, attrs: Attributes, calling_ae: str | None) -> RuleOutcome:
    """Check every condition of one rule, without regard to the other rules.

    Parameters
    ----------
    route
        The rule.
    attrs
        The series' attributes: a dataset (typically one file read with
        ``stop_before_pixels``) or a mapping from DICOM keyword to value.
    calling_ae
        The AE title that sent the series, or ``None`` when unknown.

    Returns
    -------
    RuleOutcome
        ``fired`` is left ``False``: firing depends on the other rules, which
        :func:`select` weighs. A fallback rule, which has no conditions,
        comes back matched.
    """
    conditions = [_condition(kw, spec, attrs) for kw, spec in route.match.items()]
    if route.calling_ae is not None:
        conditions.append(_check_calling_ae(route.calling_ae, calling_ae))
    matched = all(c.ok for c in conditions)
    definite = [c.reason for c in conditions if c.evaluable and not c.ok]
    if matched:
        reason = "matched"
    elif definite:
        reason = "; ".join(definite)
    else:
        reason = "cannot tell: " + "; ".join(c.reason for c in conditions if not c.ok)
    return RuleOutcome(route, matched, tuple(conditions), reason=reason)


def select(routes: Sequence[Route], attrs: Attributes, calling_ae: str | None) -> list[RuleOutcome]:
    """Decide which rules fire for one series.

    Rules are tried in order; every matching non-fallback rule fires until a
    matching ``final`` one, after which the remaining rules are not tried.
    Fallback rules fire only when no non-fallback rule fired, in their order,
    a ``final`` fallback stopping later fallbacks. A shadow rule fires like
    any other but does not count as a match for the fallback: adding a shadow
    candidate model must not change what production routing does.

    Parameters
    ----------
    routes
        The rules, in ``config.yaml`` order.
    attrs
        The series' attributes (see :func:`evaluate`).
    calling_ae
        The AE title that sent the series, or ``None`` when unknown; rules
        needing it then count as not matched, and their reason says so.

    Returns
    -------
    list of RuleOutcome
        One per rule, in order, each with ``fired`` and a ``reason``.
    """
    outcomes = [evaluate(route, attrs, calling_ae) for route in routes]
    fired: list[str] = []
    final: str | None = None
    for i, out in enumerate(outcomes):
        if out.route.fallback:
            continue
        if final is not None:
            outcomes[i] = _not_tried(out, final)
        elif out.matched:
            fired.append(out.route.name)
            reason = "matched"
            if out.route.final:
                final = out.route.name
                reason = "matched (final: later rules not tried)"
            outcomes[i] = replace(out, fired=True, reason=reason)

    undecided = [o.route.name for o in outcomes if not o.route.fallback and o.undecided]
    final = None
    production = [o.route.name for o in outcomes if o.fired and not o.route.shadow]
    for i, out in enumerate(outcomes):
        if not out.route.fallback:
            continue
        if production:
            outcomes[i] = replace(out, reason=f"not fired: {', '.join(production)} matched")
        elif final is not None:
            outcomes[i] = _not_tried(out, final)
        else:
            reason = "fired: no other rule matched"
            if undecided:
                reason += (
                    f" (unless one needing the calling AE title would have: {', '.join(undecided)})"
                )
            outcomes[i] = replace(out, fired=True, reason=reason)
            final = out.route.name if out.route.final else None
    return outcomes


def _not_tried(out: RuleOutcome, final: str) -> RuleOutcome:
    reason = f"not tried: earlier rule {final} is final"
    if out.matched and not out.route.fallback:
        reason += " (would have matched)"
    return replace(out, fired=False, tried=False, reason=reason)


def fired_routes(routes: Sequence[Route], attrs: Attributes, calling_ae: str | None) -> list[Route]:
    """The rules that fire for one series, in order: the router's whole question."""
    return [o.route for o in select(routes, attrs, calling_ae) if o.fired]


def missing_series(requirement: Requirement, series: Sequence[Attributes]) -> list[str]:
    """The entries of a route's ``require.series`` that no series of the study satisfies.

    Each is described as a person reads it (``SeriesDescription matches /(?i)lat/``), for the
    log, the events and ``route --explain``.
    """
    missing = []
    for entry in requirement.series:
        if not any(
            all(_condition(k, spec, attrs).ok for k, spec in entry.items()) for attrs in series
        ):
            missing.append(" and ".join(f"{k} {_describe(spec)}" for k, spec in entry.items()))
    return missing
