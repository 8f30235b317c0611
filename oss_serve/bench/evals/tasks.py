"""The evals: how each turns dataset rows into prompts and grades a reply.

Prompts follow the published evals' wording so that scores stay comparable with published ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from oss_serve.bench.evals.data import read_csv_rows, read_jsonl_rows
from oss_serve.bench.evals.grading import (
    extract_aime_answer,
    extract_choice_letter,
    extract_final_number,
    numbers_match,
)

MULTIPLE_CHOICE_PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step "
    "before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)
BOXED_INTEGER_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
GSM8K_PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "'Answer: $NUMBER' (without quotes).\n\n{question}"
)


@dataclass
class EvalExample:
    example_id: str
    prompt: str
    reference: str  # the correct letter, or the correct number as text


@dataclass
class Grade:
    score: float
    extracted: str | None


class EvalTask:
    name: str = ""
    default_repeats: int = 1

    def load_examples(self, dataset_texts: list[str]) -> list[EvalExample]:
        raise NotImplementedError

    def grade(self, example: EvalExample, reply: str) -> Grade:
        raise NotImplementedError


class MultipleChoiceTask(EvalTask):
    def grade(self, example: EvalExample, reply: str) -> Grade:
        letter = extract_choice_letter(reply)
        return Grade(float(letter == example.reference), letter)


class GPQATask(MultipleChoiceTask):
    """GPQA diamond: the correct answer is shuffled among the three wrong ones, with seed 0 over the file
    order, so every run (and every repeat) sees the same letters."""

    name = "gpqa"
    default_repeats = 8

    def load_examples(self, dataset_texts: list[str]) -> list[EvalExample]:
        rows = [row for text in dataset_texts for row in read_csv_rows(text)]
        shuffler = random.Random(0)
        examples = []
        for index, row in enumerate(rows):
            permutation = shuffler.sample(range(4), 4)
            choices = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
                       row["Incorrect Answer 3"]]
            shuffled = [choices[i].strip() for i in permutation]
            correct_letter = "ABCD"[permutation.index(0)]
            prompt = MULTIPLE_CHOICE_PROMPT.format(question=row["Question"].strip(), **dict(zip("ABCD", shuffled)))
            examples.append(EvalExample(f"gpqa-{index}", prompt, correct_letter))
        return examples


class MMLUTask(MultipleChoiceTask):
    name = "mmlu"

    def load_examples(self, dataset_texts: list[str]) -> list[EvalExample]:
        rows = [row for text in dataset_texts for row in read_csv_rows(text)]
        return [EvalExample(f"mmlu-{index}",
                            MULTIPLE_CHOICE_PROMPT.format(question=row["Question"].strip(),
                                                          **{letter: row[letter] for letter in "ABCD"}),
                            row["Answer"].strip().upper())
                for index, row in enumerate(rows)]


class AIME25Task(EvalTask):
    name = "aime25"
    default_repeats = 8

    def load_examples(self, dataset_texts: list[str]) -> list[EvalExample]:
        rows = [row for text in dataset_texts for row in read_jsonl_rows(text)]
        return [EvalExample(f"aime25-{index}",
                            BOXED_INTEGER_PROMPT.format(question=str(row.get("question") or row["problem"]).strip()),
                            str(int(str(row["answer"]).strip())))
                for index, row in enumerate(rows)]

    def grade(self, example: EvalExample, reply: str) -> Grade:
        answer = extract_aime_answer(reply)
        return Grade(float(answer is not None and answer == int(example.reference)),
                     None if answer is None else str(answer))


class GSM8KTask(EvalTask):
    name = "gsm8k"

    def load_examples(self, dataset_texts: list[str]) -> list[EvalExample]:
        rows = [row for text in dataset_texts for row in read_jsonl_rows(text)]
        # The reference solution ends with "#### <number>".
        return [EvalExample(f"gsm8k-{index}", GSM8K_PROMPT.format(question=row["question"].strip()),
                            str(row["answer"]).split("####")[-1].strip().replace(",", ""))
                for index, row in enumerate(rows)]

    def grade(self, example: EvalExample, reply: str) -> Grade:
        value = extract_final_number(reply)
        extracted = None if value is None else (str(int(value)) if value == int(value) else str(value))
        return Grade(float(numbers_match(value, float(example.reference))), extracted)


TASKS: dict[str, type[EvalTask]] = {"gpqa": GPQATask, "mmlu": MMLUTask, "aime25": AIME25Task, "gsm8k": GSM8KTask}


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise ValueError(f"unknown eval {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]()
