"""Reading the final answer out of a model's reply, in the formats the published evals accept.

Multiple choice: `Answer: B` (any case for the word, optional markdown bold, parentheses or `$`), `\\boxed{B}`,
`the answer is (B)`, or a last line that is only the letter. Numbers: the last `\\boxed{}`
(nested braces allowed), else `Answer: 42`, else the last number in the text.
"""
from __future__ import annotations

import re

_LETTER = r"\(?\**\s*\$?\\?(?:text\{|textbf\{|mathrm\{)?\s*([A-D])\s*\}?\$?\s*\**\)?"
_ANSWER_LINE = re.compile(r"(?:\*\*|__)?(?i:final\s+)?(?i:answer)(?:\*\*|__)?\s*(?:is)?\s*[:：]\s*(?:\*\*)?\s*"
                          + _LETTER + r"(?![A-Za-z])")
_ANSWER_IS = re.compile(r"(?i:the\s+)?(?i:correct\s+|final\s+)?(?i:answer|option|choice)\s+is\s*:?\s*" + _LETTER
                        + r"(?![A-Za-z])")
_LONE_LETTER_LINE = re.compile(r"^\s*(?:\*\*)?\(?([A-D])\)?[.)]?(?:\*\*)?\s*$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox`, `\\framebox`), braces balanced."""
    last: str | None = None
    for match in re.finditer(r"\\(?:boxed|fbox|framebox)\s*\{", text):
        depth, start = 1, match.end()
        for position in range(start, len(text)):
            if text[position] == "{":
                depth += 1
            elif text[position] == "}":
                depth -= 1
                if depth == 0:
                    last = text[start:position]
                    break
    return last.strip() if last is not None else None


def extract_choice_letter(text: str) -> str | None:
    """The chosen option A-D, or None when the reply commits to none."""
    matches = _ANSWER_LINE.findall(text)
    if matches:
        return matches[-1]
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = re.fullmatch(r"\s*\(?\\?(?:text\{|textbf\{|mathrm\{)?\s*([A-Da-d])\s*\}?\)?\s*", boxed)
        if inner:
            return inner.group(1).upper()
    matches = _ANSWER_IS.findall(text)
    if matches:
        return matches[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines and (lone := _LONE_LETTER_LINE.match(lines[-1])):
        return lone.group(1)
    return None


def normalize_number(text: str) -> float | None:
    """`1,234`, `$18.00`, `\\text{42}`, `42.` -> a float; None if no number is there."""
    cleaned = re.sub(r"\\text\{([^}]*)\}", r"\1", text).replace("\\$", "").replace("$", "").replace("\\!", "")
    cleaned = re.sub(r"\\(?:dfrac|frac)\{(-?\d+)\}\{(\d+)\}", lambda m: str(int(m[1]) / int(m[2])), cleaned)
    match = _NUMBER.search(cleaned)
    # _NUMBER's matches, commas removed, are always valid floats.
    return None if match is None else float(match.group(0).replace(",", ""))


def extract_final_number(text: str) -> float | None:
    boxed = extract_boxed(text)
    if boxed is not None and (value := normalize_number(boxed)) is not None:
        return value
    answer_lines = re.findall(r"(?i)answer\s*(?:is)?\s*[:：]?\s*\**\s*([^\n]*)", text)
    for line in reversed(answer_lines):
        if (value := normalize_number(line)) is not None:
            return value
    numbers = _NUMBER.findall(text.replace("$", ""))
    return float(numbers[-1].replace(",", "")) if numbers else None


def extract_aime_answer(text: str) -> int | None:
    """AIME answers are integers 0-999; `\\boxed{033}` means 33."""
    value = extract_final_number(text)
    if value is None or value != int(value):
        return None
    return int(value)


def numbers_match(predicted: float | None, reference: float) -> bool:
    return predicted is not None and abs(predicted - reference) <= 1e-6 * max(1.0, abs(reference))
