"""d1's completion layout (Zhao et al. 2025): writing it, finding its answer, rewarding it.

  <reasoning>\\n ... \\n</reasoning>\\n<answer>\\n ... \\n</answer>

A task without reference reasoning (Sudoku) keeps only the <answer> block. The format
rewards (d1 uses them for GSM8K) read strings only and never raise on model output:

  term             max   meaning
  xml_count        0.5   0.125 for each of the four tags present exactly once, minus 0.001
                         per character after "</answer>" (surrounding whitespace not
                         counted; the penalty is capped at that tag's 0.125, where d1's is
                         unbounded below)
  soft_format      0.5   "<reasoning>", "</reasoning>", then (after optional whitespace)
                         "<answer>" and "</answer>", in that order, anywhere in the text
                         (d1 anchors it at the start)
  strict_format    0.5   the whole completion is exactly the layout above (each tag once;
                         only trailing whitespace may follow)
"""
import re

REASONING_OPEN, REASONING_CLOSE = "<reasoning>", "</reasoning>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

XML_TAG_REWARD = 0.125
XML_TRAILING_PENALTY_PER_CHAR = 0.001
SOFT_FORMAT_REWARD = 0.5
STRICT_FORMAT_REWARD = 0.5


def format_response(reasoning: str, answer: str) -> str:
  """The layout holding `reasoning` and `answer`; no reasoning block if it is empty."""
  answer_text = f"{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"
  if not reasoning:
    return answer_text
  return f"{REASONING_OPEN}\n{reasoning}\n{REASONING_CLOSE}\n{answer_text}"


def answer_block(text: str) -> str | None:
  """Stripped content of the last complete <answer>...</answer> block, or None.

  The block ends at the last "</answer>" and starts at the last "<answer>" before it.
  """
  end = text.rfind(ANSWER_CLOSE)
  if end < 0:
    return None
  start = text.rfind(ANSWER_OPEN, 0, end)
  if start < 0:
    return None
  return text[start + len(ANSWER_OPEN):end].strip()


_STRICT_RE = re.compile(r"<reasoning>\n.*\n</reasoning>\n<answer>\n.*\n</answer>\s*", re.DOTALL)
_REASONING_THEN_ANSWER_RE = re.compile(r"</reasoning>\s*<answer>")


def strict_format_reward(completion: str) -> float:
  """STRICT_FORMAT_REWARD when the completion is exactly the reasoning/answer layout."""
  if any(completion.count(tag) != 1 for tag in TAGS):
    return 0.0
  return STRICT_FORMAT_REWARD if _STRICT_RE.fullmatch(completion) else 0.0


def soft_format_reward(completion: str) -> float:
  """SOFT_FORMAT_REWARD when the four tags appear in order (anything around them)."""
  start = completion.find(REASONING_OPEN)
  if start < 0:
    return 0.0
  middle = _REASONING_THEN_ANSWER_RE.search(completion, start + len(REASONING_OPEN))
  if middle is None or completion.find(ANSWER_CLOSE, middle.end()) < 0:
    return 0.0
  return SOFT_FORMAT_REWARD


def xml_count_reward(completion: str) -> float:
  """XML_TAG_REWARD per tag present exactly once, less a capped trailing-text penalty."""
  reward = 0.0
  for tag in TAGS:
    if completion.count(tag) == 1:
      reward += XML_TAG_REWARD
  if completion.count(ANSWER_CLOSE) == 1:
    trailing = completion.split(ANSWER_CLOSE)[-1].strip()
    reward -= min(XML_TAG_REWARD, XML_TRAILING_PENALTY_PER_CHAR * len(trailing))
  return reward
