"""Chat: templated two-turn dialogues between a user and an assistant.

The prompt is a system line and the user's opening turn; the reference is the assistant's
answer, a follow-up from the user and the assistant's second answer. Intents, phrasings
and facts are drawn independently, so the same question comes in many surface forms.
"""

from __future__ import annotations

import random

from .sample import LengthBudget, Sample, draw_unique

SYSTEMS = ("You are a helpful assistant.", "You are a friendly, concise assistant.", "Answer clearly and briefly.")
OPENERS = ("", "Hi! ", "Hello, ", "Hey, ", "Good morning! ", "Quick question: ")
THANKS = ("Thanks! ", "Great, thanks. ", "Okay. ", "")

# city: (winter, summer, getting around, three sights)
CITIES = {
    "Lisbon": ("mild and rainy", "hot and sunny", "trams and the metro", ("the Belem Tower", "the Alfama district", "the riverside at Cais do Sodre")),
    "Oslo": ("cold and snowy", "mild with long days", "the metro and ferries", ("the Opera House roof", "the Viking Ship Museum", "Frogner Park")),
    "Kyoto": ("cold and dry", "hot and humid", "buses and bicycles", ("the Fushimi Inari shrine", "the Arashiyama bamboo grove", "Nishiki Market")),
    "Nairobi": ("warm and dry", "mild and cloudy", "matatus and taxis", ("Nairobi National Park", "the Giraffe Centre", "the Karen Blixen Museum")),
    "Toronto": ("cold and snowy", "warm and humid", "the subway and streetcars", ("the CN Tower", "the Distillery District", "the Toronto Islands")),
    "Lima": ("mild and grey", "warm and sunny", "buses and taxis", ("the historic centre", "the Miraflores cliffs", "the Larco Museum")),
    "Edinburgh": ("cold and windy", "cool and changeable", "walking and buses", ("Edinburgh Castle", "Arthur's Seat", "the Royal Mile")),
    "Melbourne": ("cool and showery", "hot and dry", "trams and trains", ("the laneways", "the Royal Botanic Gardens", "Queen Victoria Market")),
}  # fmt: skip
MONTHS = {"January": 0, "February": 0, "March": 0, "April": 1, "May": 1, "June": 1,
          "July": 1, "August": 1, "September": 1, "October": 0, "November": 0, "December": 0}  # fmt: skip
# dish: (ingredients, method, servings)
DISHES = {
    "pancakes": ("flour, milk, eggs and a little butter", "whisk everything into a smooth batter and cook each pancake for about two minutes per side", 4),
    "tomato soup": ("tomatoes, an onion, garlic, stock and olive oil", "soften the onion and garlic, add the tomatoes and stock, simmer for twenty minutes and blend", 4),
    "fried rice": ("cooked rice, eggs, peas, spring onions and soy sauce", "scramble the eggs in a hot pan, add the rice and peas, then season with soy sauce", 2),
    "guacamole": ("ripe avocados, lime, onion, coriander and salt", "mash the avocados and stir in the lime juice, chopped onion, coriander and salt", 4),
    "banana bread": ("ripe bananas, flour, sugar, eggs, butter and baking soda", "mash the bananas, mix in the other ingredients and bake for about an hour", 8),
    "a simple omelette": ("eggs, butter, salt and a handful of cheese", "beat the eggs, pour them into foaming butter, add the cheese and fold once set", 1),
    "lentil curry": ("red lentils, an onion, curry paste, coconut milk and spinach", "fry the onion with the paste, add the lentils and coconut milk, simmer, then stir in the spinach", 4),
}  # fmt: skip
# (big unit, small unit, factor)
UNITS = (("kilometres", "metres", 1000), ("hours", "minutes", 60), ("kilograms", "grams", 1000), ("minutes", "seconds", 60),
         ("days", "hours", 24), ("litres", "millilitres", 1000), ("feet", "inches", 12), ("weeks", "days", 7),
         ("metres", "centimetres", 100), ("years", "months", 12))  # fmt: skip
# problem: (first fix, second fix, last resort)
PROBLEMS = {
    "turn on": ("hold the power button for ten seconds", "charge it for at least half an hour", "try a different charger or outlet"),
    "connect to the wifi": ("turn wifi off and on again", "restart the router", "forget the network and join it again with the password"),
    "charge": ("check the cable for damage", "clean the charging port gently", "try another cable and power adapter"),
    "make any sound": ("check that it is not muted", "turn the volume up and test with another app", "restart it and check the audio output settings"),
    "install updates": ("make sure there is enough free storage", "restart it and try again", "connect to a stable network and update overnight"),
}  # fmt: skip
DEVICES = ("laptop", "phone", "tablet", "printer", "smart TV", "headphones", "router", "game console")
# term: (what it is, an example)
TERMS = {
    "overfitting": ("when a model fits its training data so closely that it does worse on new data", "a model that memorises the answers to practice questions but fails the real exam"),
    "recursion": ("when a function solves a problem by calling itself on smaller parts of it", "computing a factorial as n times the factorial of n minus one"),
    "an API": ("a defined way for one program to ask another program for data or actions", "a weather app asking a weather service for today's forecast"),
    "latency": ("the time between a request and its response", "the pause between clicking a link and the page starting to load"),
    "a cache": ("a fast store that keeps recent results so they need not be computed again", "a browser keeping images so a page loads faster the second time"),
    "compound interest": ("interest earned on both the original amount and on earlier interest", "100 dollars at 10 percent becoming 110, then 121 after two years"),
    "a hash function": ("a function that maps data of any size to a short fixed-size value", "checking that a downloaded file matches its published checksum"),
    "photosynthesis": ("the process plants use to turn light, water and carbon dioxide into sugar and oxygen", "a leaf making food from sunlight"),
    "inflation": ("the general rise of prices over time, so money buys less", "a coffee that cost two dollars costing two fifty a few years later"),
    "a binary search": ("a way to find an item in a sorted list by halving the search range each step", "looking up a word in a dictionary by opening it in the middle"),
}  # fmt: skip
NAMES = ("Alex", "Maya", "Jonas", "Leila", "Tomas", "Grace", "Ravi", "Sofia", "Kenji", "Amara")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _climate(rng: random.Random) -> tuple[str, str, str, str]:
    city, month = rng.choice(list(CITIES)), rng.choice(list(MONTHS))
    weather = CITIES[city][MONTHS[month]]
    ask = rng.choice((f"What is the weather usually like in {city} in {month}?",
                      f"I'm visiting {city} in {month}. What weather should I expect?"))  # fmt: skip
    answer = f"I can't check live forecasts, but in {month} {city} is usually {weather}."
    rain = "rain" in weather or "showery" in weather or "changeable" in weather
    follow = "Should I pack an umbrella?"
    second = "Yes, a small umbrella is a good idea." if rain else "You probably won't need one, but a light jacket helps."
    return ask, answer, follow, second


def _recipe(rng: random.Random) -> tuple[str, str, str, str]:
    dish = rng.choice(list(DISHES))
    ingredients, method, serves = DISHES[dish]
    ask = rng.choice((f"How do I make {dish}?", f"Can you give me a simple recipe for {dish}?",
                      f"I want to cook {dish} tonight. Where do I start?"))  # fmt: skip
    answer = f"You will need {ingredients}. Then {method}."
    people = rng.randint(2, 12)
    follow = f"Is that enough for {people} people?"
    if people <= serves:
        second = f"Yes, it serves about {serves}, so {people} people will have plenty."
    else:
        second = f"It serves about {serves}, so for {people} people make {-(-people // serves)} times the amounts."
    return ask, answer, follow, second


def _conversion(rng: random.Random) -> tuple[str, str, str, str]:
    big, small, factor = rng.choice(UNITS)
    amount, other = rng.randint(2, 99), rng.randint(2, 99)
    ask = rng.choice((f"How many {small} are in {amount} {big}?", f"Can you convert {amount} {big} to {small}?"))
    answer = f"There are {factor} {small} in one of the {big}, so {amount} {big} is {amount} * {factor} = {amount * factor} {small}."
    follow = f"And {other} {big}?"
    second = f"{other} {big} is {other} * {factor} = {other * factor} {small}."
    return ask, answer, follow, second


def _travel(rng: random.Random) -> tuple[str, str, str, str]:
    city, days = rng.choice(list(CITIES)), rng.randint(1, 7)
    _, _, transport, (first, second_sight, third) = CITIES[city]
    span = "one day" if days == 1 else f"{days} days"
    ask = rng.choice((f"I have {span} in {city}. What should I see?", f"What are the highlights of {city} if I only have {span}?"))
    answer = f"With {span} in {city}, start with {first}, then visit {second_sight}. If you have time, finish at {third}."
    follow = "Is it easy to get around?"
    second = f"Yes, {transport} cover most of the city, and the centre is easy to walk."
    return ask, answer, follow, second


def _support(rng: random.Random) -> tuple[str, str, str, str]:
    device, problem = rng.choice(DEVICES), rng.choice(list(PROBLEMS))
    first, second_fix, last = PROBLEMS[problem]
    ask = rng.choice((f"My {device} won't {problem}. What can I do?", f"Help, my {device} doesn't {problem} anymore."))
    answer = f"Sorry to hear that. First, {first}. If that does not help, {second_fix}."
    follow = "I tried both and it still doesn't work."
    second = f"Then {last}. If the {device} still won't {problem}, contact the manufacturer's support."
    return ask, answer, follow, second


def _meeting(rng: random.Random) -> tuple[str, str, str, str]:
    name, day, minutes, hour = rng.choice(NAMES), rng.choice(WEEKDAYS), rng.choice((15, 30, 45, 60)), rng.randint(9, 14)
    ask = rng.choice((f"Can you help me plan a {minutes}-minute meeting with {name} next {day}?",
                      f"I need to meet {name} for {minutes} minutes next {day}. When should we meet?"))  # fmt: skip
    answer = f"Sure. How about {day} at {hour}:00? That leaves room for a short agenda and {minutes} minutes of discussion."
    follow = "Can we make it later?"
    second = f"Then {day} at {hour + 2}:30 works, and I'll keep it to {minutes} minutes."
    return ask, answer, follow, second


def _definition(rng: random.Random) -> tuple[str, str, str, str]:
    term = rng.choice(list(TERMS))
    definition, example = TERMS[term]
    ask = rng.choice((f"What is {term}?", f"Can you explain {term} in simple words?", f"What does {term} mean?"))
    answer = f"{term[0].upper()}{term[1:]} is {definition}."
    follow = rng.choice(("Can you give an example?", "Do you have an everyday example?"))
    second = f"Sure: think of {example}."
    return ask, answer, follow, second


INTENTS = (_climate, _recipe, _conversion, _travel, _support, _meeting, _definition)


def _draw(rng: random.Random) -> tuple[str, str]:
    ask, answer, follow, second = rng.choice(INTENTS)(rng)
    prompt = f"System: {rng.choice(SYSTEMS)}\nUser: {rng.choice(OPENERS)}{ask}\nAssistant:"
    reference = f" {answer}\nUser: {rng.choice(THANKS)}{follow}\nAssistant: {second}"
    return prompt, reference


def generate(count: int, rng: random.Random, budget: LengthBudget) -> list[Sample]:
    """`count` dialogues with distinct prompts."""
    return draw_unique("chat", count, rng, budget, _draw)
