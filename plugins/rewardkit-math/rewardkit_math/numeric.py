"""Number comparison for ``math.accuracy`` that is exact at every magnitude, with tolerance only when asked.

math-verify 0.9 decides two numbers by rounding floats to ``float_rounding`` decimal places, or by
``(a - b).evalf(chop=True) == 0``. Both are absolute: every number below about 1e-6 equals every other
(``1/2^99 == 1/2^98``), and a truncated decimal equals the fraction (``0.333333 == 1/3``). Here instead:

- a decimal as written (``0.1``, ``1.5\\times10^{-300}``) is the exact rational it denotes, not a double;
- two rationals are equal only when they are equal, in exact arithmetic, at any magnitude;
- irrational values (``\\sqrt{2}``, ``\\pi``) are compared on ``DIGITS`` significant digits, relatively;
- a tolerance applies only when the user sets one: ``|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)``.

``numeric_eq`` has the signature of ``math_verify.grader.sympy_numeric_eq``, which the checker worker replaces
with it (math-verify looks the name up at call time, so sets, intervals, equations and matrices all compare
their elements here). The ``float_rounding`` argument that math-verify threads through to it carries a
:class:`Tolerance` instead of a number of decimal places.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

DIGITS = 60  # significant digits for irrational values
GUARD = Fraction(1, 10 ** 45)  # relative difference below which two irrational values are equal


class Tolerance(NamedTuple):
    rel: Fraction = Fraction(0)
    abs: Fraction = Fraction(0)


def tolerance(rel_tol: float = 0.0, precision: int | None = None) -> Tolerance:
    """``rel_tol`` as the decimal it is written as (1e-5 is exactly 1/100000); ``precision`` N -> half a unit
    in the N-th decimal place."""
    rel = Fraction(repr(float(rel_tol)))
    return Tolerance(rel, Fraction(0) if precision is None else Fraction(5, 10 ** (precision + 1)))


def close(a: Fraction, b: Fraction, tol: Tolerance) -> bool:
    """Exact: ``|a - b| <= max(rel * max(|a|, |b|), abs)``; with no tolerance, ``a == b``."""
    return abs(a - b) <= max(tol.rel * max(abs(a), abs(b)), tol.abs)


def exact(expr):
    """``expr`` with every float replaced by the exact rational of its decimal digits (sympy keeps them)."""
    from sympy import Float, Rational

    floats = expr.atoms(Float)
    return expr.xreplace({f: Rational(str(f)) for f in floats}) if floats else expr


def _as_fraction(value) -> Fraction:
    return Fraction(int(value.p), int(value.q))


def numbers_equal(a, b, tol: Tolerance) -> bool | None:
    """Whether two sympy values are the same number; None when either is not a finite number."""
    from sympy import Abs, Max, nan, oo, zoo

    try:
        a, b = exact(a.doit()), exact(b.doit())
    except Exception:  # noqa: BLE001 - not something sympy can evaluate: not ours to decide
        return None
    if not (getattr(a, "is_number", False) and getattr(b, "is_number", False)) or any(
            x.has(oo, -oo, zoo, nan) for x in (a, b)):
        return None
    if a.is_Rational and b.is_Rational:
        return close(_as_fraction(a), _as_fraction(b), tol)
    if tol == Tolerance():  # complex numbers with rational parts: exactly, part by part
        parts = [*a.as_real_imag(), *b.as_real_imag()]
        if all(p.is_Rational for p in parts):
            return parts[0] == parts[2] and parts[1] == parts[3]
    va, vb = a.evalf(DIGITS), b.evalf(DIGITS)
    try:  # |va - vb| and max(|va|, |vb|) as exact fractions of their DIGITS-digit decimals
        diff = Fraction(str(Abs(va - vb).evalf(DIGITS)))
        scale = Fraction(str(Max(Abs(va), Abs(vb)).evalf(DIGITS)))
    except (ValueError, TypeError):  # not a real magnitude (a symbol slipped through): not ours to decide
        return None
    return diff <= max(max(tol.rel, GUARD) * scale, tol.abs)


def numeric_eq(a, b, float_rounding, numeric_precision) -> bool:
    """Drop-in for ``math_verify.grader.sympy_numeric_eq``; ``float_rounding`` is a :class:`Tolerance`."""
    from math_verify.grader import get_pct_val, is_atomic_or_pct_atomic, safe_sympy_doit
    from sympy import Integer, MatrixBase
    from sympy.matrices.expressions import MatrixExpr

    tol = float_rounding if isinstance(float_rounding, Tolerance) else Tolerance()
    if isinstance(a, (MatrixBase, MatrixExpr)) and isinstance(b, (MatrixBase, MatrixExpr)):
        a, b = safe_sympy_doit(a), safe_sympy_doit(b)
        if isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape:
            return all(numeric_eq(x, y, tol, numeric_precision) for x, y in zip(a.flat(), b.flat(), strict=True))
        return False
    if is_atomic_or_pct_atomic(a, Integer) and is_atomic_or_pct_atomic(b, Integer):
        if get_pct_val(a, a) == get_pct_val(b, b):  # as math-verify: "50\%" and "50" are the same answer
            return True
    verdict = numbers_equal(a, b, tol)
    if verdict is not None:
        return verdict
    try:  # expressions with symbols: equal when their exact difference is 0 (symbolic checks come next)
        return bool(exact(a) - exact(b) == 0)
    except Exception:  # noqa: BLE001 - as math-verify: a comparison that raises is not equality
        return False
