"""Math: generated arithmetic word problems with worked, step-by-step solutions.

Every problem family draws its own numbers, so solutions are correct and a model has to
carry numbers through the steps (hard to draft) between formulaic phrasing (easy to draft).
"""

from __future__ import annotations

import random

from .sample import LengthBudget, Sample, draw_unique

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wen", "Yusuf")  # fmt: skip
ITEMS = (("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"), ("ticket", "tickets"),
         ("book", "books"), ("candle", "candles"), ("mug", "mugs"), ("poster", "posters"),
         ("sticker", "stickers"), ("muffin", "muffins"), ("battery", "batteries"), ("plant", "plants"))  # fmt: skip
THINGS = ("marbles", "stamps", "shells", "coins", "cards", "beads", "buttons", "seeds")
GOODS = ("chairs", "bracelets", "loaves of bread", "birdhouses", "scarves", "cupcakes")


def _shopping(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    (one_a, many_a), (one_b, many_b) = rng.sample(ITEMS, 2)
    count_a, price_a, count_b, price_b = rng.randint(2, 9), rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 12)
    total_a, total_b = count_a * price_a, count_b * price_b
    total = total_a + total_b
    bill = next(b for b in (20, 50, 100, 200, 500) if b > total)
    question = (f"{name} buys {count_a} {many_a} for ${price_a} each and {count_b} {many_b} for ${price_b} each. "
                f"{name} pays with a ${bill} bill. How much change does {name} get?")  # fmt: skip
    steps = [f"The {many_a} cost {count_a} * {price_a} = ${total_a}.",
             f"The {many_b} cost {count_b} * {price_b} = ${total_b}.",
             f"Together they cost {total_a} + {total_b} = ${total}.",
             f"The change is {bill} - {total} = ${bill - total}."]  # fmt: skip
    return question, steps, bill - total


def _collection(rng: random.Random) -> tuple[str, list[str], int]:
    name, friend = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    start, boxes, per_box = rng.randint(5, 60), rng.randint(2, 8), rng.randint(3, 12)
    added = boxes * per_box
    given = rng.randint(1, start + added - 1)
    question = (f"{name} has {start} {thing}. {name} buys {boxes} boxes with {per_box} {thing} in each box, "
                f"then gives {given} {thing} to {friend}. How many {thing} does {name} have now?")  # fmt: skip
    steps = [f"The boxes hold {boxes} * {per_box} = {added} {thing}.",
             f"After buying, {name} has {start} + {added} = {start + added} {thing}.",
             f"After giving {given} away, {name} has {start + added} - {given} = {start + added - given} {thing}."]  # fmt: skip
    return question, steps, start + added - given


def _travel(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    speed_1, hours_1, speed_2, hours_2 = rng.randint(4, 12) * 5, rng.randint(1, 5), rng.randint(4, 12) * 5, rng.randint(1, 4)
    leg_1, leg_2 = speed_1 * hours_1, speed_2 * hours_2
    question = (f"{name} drives at {speed_1} km per hour for {hours_1} hours, then at {speed_2} km per hour "
                f"for {hours_2} hours. How far does {name} drive in total?")  # fmt: skip
    steps = [f"The first part is {speed_1} * {hours_1} = {leg_1} km.",
             f"The second part is {speed_2} * {hours_2} = {leg_2} km.",
             f"In total {name} drives {leg_1} + {leg_2} = {leg_1 + leg_2} km."]  # fmt: skip
    return question, steps, leg_1 + leg_2


def _sharing(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    friends, share = rng.randint(2, 9), rng.randint(3, 15)
    left = rng.randint(0, friends - 1)
    total = friends * share + left
    thing = rng.choice(THINGS)
    question = (f"{name} shares {total} {thing} equally among {friends} friends and keeps whatever is left over. "
                f"How many {thing} does each friend get, and how many does {name} keep?")  # fmt: skip
    steps = [f"Dividing {total} by {friends} gives {share} with {left} left over, so each friend gets {share} {thing}.",
             f"The friends get {friends} * {share} = {friends * share} {thing} in all.",
             f"{name} keeps {total} - {friends * share} = {left} {thing}."]  # fmt: skip
    return question, steps, share


def _discount(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    one, _ = rng.choice(ITEMS)
    price, percent, count = rng.randint(2, 30) * 10, rng.choice((10, 20, 25, 30, 50)), rng.randint(2, 5)
    off = price * percent // 100
    question = (f"A {one} normally costs ${price}. During a sale every {one} is {percent}% off. "
                f"{name} buys {count} of them. How much does {name} pay?")  # fmt: skip
    steps = [f"The discount is {percent}% of {price} = {price} * {percent} / 100 = ${off}.",
             f"One {one} costs {price} - {off} = ${price - off} on sale.",
             f"{count} of them cost {count} * {price - off} = ${count * (price - off)}."]  # fmt: skip
    return question, steps, count * (price - off)


def _garden(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    length, width, cost = rng.randint(3, 25), rng.randint(2, 15), rng.randint(2, 9)
    perimeter = 2 * (length + width)
    question = (f"{name}'s garden is a rectangle {length} m long and {width} m wide. Fencing costs ${cost} per metre. "
                f"What is the area of the garden, and how much does it cost to fence it?")  # fmt: skip
    steps = [f"The area is {length} * {width} = {length * width} square metres.",
             f"The perimeter is 2 * ({length} + {width}) = {perimeter} m.",
             f"The fence costs {perimeter} * {cost} = ${perimeter * cost}."]  # fmt: skip
    return question, steps, perimeter * cost


def _workshop(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    goods = rng.choice(GOODS)
    per_hour, hours, days, price = rng.randint(2, 9), rng.randint(3, 8), rng.randint(2, 6), rng.randint(3, 20)
    per_day = per_hour * hours
    made = per_day * days
    question = (f"{name} makes {per_hour} {goods} per hour and works {hours} hours a day for {days} days. "
                f"Each one sells for ${price}. How much money does {name} earn?")  # fmt: skip
    steps = [f"Each day {name} makes {per_hour} * {hours} = {per_day} {goods}.",
             f"Over {days} days that is {per_day} * {days} = {made} {goods}.",
             f"Selling them earns {made} * {price} = ${made * price}."]  # fmt: skip
    return question, steps, made * price


def _savings(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    weekly, weeks, start = rng.randint(3, 40), rng.randint(3, 12), rng.randint(0, 50)
    saved = weekly * weeks
    spent = rng.randint(1, start + saved - 1)
    one, _ = rng.choice(ITEMS)
    question = (f"{name} has ${start} and saves ${weekly} every week for {weeks} weeks. "
                f"Then {name} spends ${spent} on a new {one}. How much money is left?")  # fmt: skip
    steps = [f"{name} saves {weekly} * {weeks} = ${saved}.",
             f"With the starting money that is {start} + {saved} = ${start + saved}.",
             f"After spending, {start + saved} - {spent} = ${start + saved - spent} is left."]  # fmt: skip
    return question, steps, start + saved - spent


FAMILIES = (_shopping, _collection, _travel, _sharing, _discount, _garden, _workshop, _savings)


def _draw(rng: random.Random) -> tuple[str, str]:
    question, steps, answer = rng.choice(FAMILIES)(rng)
    prompt = f"Problem: {question}\nSolution:"
    reference = " " + "\n".join(steps) + f"\nAnswer: {answer}"
    return prompt, reference


def generate(count: int, rng: random.Random, budget: LengthBudget) -> list[Sample]:
    """`count` word problems with distinct prompts."""
    return draw_unique("math", count, rng, budget, _draw)
