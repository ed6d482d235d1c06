"""Reading answers out of text: numbers, LaTeX \\boxed{}, and the examples' own fields.

Shared by the tasks' rewards and correctness checks. Everything here reads strings and
never executes them; model output never raises, while a malformed example field (data, not
model output) raises ValueError naming it.

Decisions: numbers compare exactly as Fractions and "50%" counts as 50 (GSM8K and MATH write
percentages bare).
"""
from fractions import Fraction
import numbers as numbers_lib
import re
from typing import Any

CORRECT_REWARD = 2.0  # d1's reward for a correct final answer (GSM8K, MATH).

_BOXED_RE = re.compile(r"\\boxed\s*\{")


def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} whose braces close (nesting allowed), or None."""
  if "\\boxed" not in text:
    return None
  close_of, open_positions = {}, []
  for i, char in enumerate(text):
    if char == "{":
      open_positions.append(i)
    elif char == "}" and open_positions:
      close_of[open_positions.pop()] = i
  for match in reversed(list(_BOXED_RE.finditer(text))):
    brace = match.end() - 1
    if brace in close_of:
      return text[brace + 1:close_of[brace]].strip()
  return None


# An unsigned decimal: "1,000" (thousands groups), "18", "3.5" or ".5".
UNSIGNED_NUMBER = r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
_WHOLE_NUMBER_RE = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:\$\s*)?(?P<num>{UNSIGNED_NUMBER})"
    rf"(?:\s*/\s*(?P<den>{UNSIGNED_NUMBER}))?\s*%?")
_LATEX_FRACTION_RE = re.compile(
    rf"(?P<sign>[-+]?)\s*\\[dt]?frac\s*\{{\s*(?P<num>{UNSIGNED_NUMBER})\s*\}}"
    rf"\s*\{{\s*(?P<den>{UNSIGNED_NUMBER})\s*\}}")
# A number inside running text; a minus sign counts only where it cannot be subtraction.
_NUMBER_IN_TEXT_RE = re.compile(
    rf"(?:(?P<sign>(?<![\w)\]}}])-)\s?)?\$?(?<![\w.])(?P<num>{UNSIGNED_NUMBER})"
    rf"(?:/(?P<den>[0-9]+)(?!\.?[0-9]))?", re.ASCII)


def fraction_from_match(match: re.Match) -> Fraction | None:
  """The matched number; None for a zero denominator or a literal too long for int()."""
  try:
    value = Fraction(match["num"].replace(",", ""))
    denominator = Fraction(match["den"].replace(",", "")) if match["den"] else Fraction(1)
  except ValueError:  # Python refuses int(str) above sys.get_int_max_str_digits() digits.
    return None
  if denominator == 0:
    return None
  value /= denominator
  return -value if match["sign"] == "-" else value


def parse_number(text: str) -> Fraction | None:
  """The number that makes up all of `text`, or None.

  Accepts "1,000", "1000.0", ".5", "-3", "$18" / "\\$18", "-$18", "3/4", "\\frac{3}{4}"
  (also \\dfrac, \\tfrac), spaces between those parts ("- $ 18", but "1 2" is no number),
  a trailing "." and a trailing "%" (or "\\%"). A percent sign is
  ignored, not divided by 100: GSM8K and MATH write percentage answers as the bare number
  ("50%" == "50").
  """
  s = text.replace("\u2212", "-").replace("\\$", "$").replace("\\%", "%").strip()
  s = s.rstrip(".").rstrip()
  match = _WHOLE_NUMBER_RE.fullmatch(s) or _LATEX_FRACTION_RE.fullmatch(s)
  return fraction_from_match(match) if match else None


def last_number(text: str) -> Fraction | None:
  """The last number written in running text (see `parse_number` for the forms), or None."""
  matches = list(_NUMBER_IN_TEXT_RE.finditer(text.replace("\u2212", "-")))
  for match in reversed(matches):
    value = fraction_from_match(match)
    if value is not None:
      return value
  return None


def field_text(value: Any, name: str) -> str:
  """The example field `name` as a string (bytes decoded); ValueError otherwise."""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if not isinstance(value, str):
    raise ValueError(f"example field {name!r} must be a string, got {type(value).__name__}")
  return value


def field_fraction(value: Any, name: str) -> Fraction:
  """The example field `name` as an exact number; ValueError naming it otherwise."""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  try:
    if isinstance(value, str):
      return Fraction(value.strip())
    if isinstance(value, numbers_lib.Rational):
      return Fraction(value)
    return Fraction(float(value))
  except (TypeError, ValueError, OverflowError) as e:
    raise ValueError(f"example field {name!r} is not a number: {value!r}") from e


