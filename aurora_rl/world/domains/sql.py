"""SQL: generated natural-language questions and their queries over a small shop schema.

The prompt names the tables the question needs and asks it; the reference is the query,
one clause per line, and a one-line comment on what it does. Structured queries are rigid
and repetitive, so they are the domain a drafter should find easiest.
"""

from __future__ import annotations

import random

from .sample import LengthBudget, Sample, draw_unique

TABLES = {
    "customers": "customers(id, name, city, joined)",
    "products": "products(id, name, category, price)",
    "orders": "orders(id, customer_id, product_id, qty, day)",
    "employees": "employees(id, name, dept, salary, hired)",
}
CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Toronto", "Dublin", "Seoul", "Austin", "Porto",
          "Krakow", "Accra", "Hanoi", "Quito", "Perth", "Bergen", "Leeds", "Tunis", "Cebu", "Graz")  # fmt: skip
CATEGORIES = ("books", "garden", "toys", "kitchen", "music", "sports", "office", "outdoor", "beauty", "games")
DEPARTMENTS = ("sales", "support", "finance", "engineering", "marketing", "legal", "operations", "research")
YEARS = tuple(range(2015, 2025))


def _date(rng: random.Random) -> str:
    return f"{rng.choice(YEARS)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _customers_in_city(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    city, year = rng.choice(CITIES), rng.choice(YEARS)
    question = f"List the names of customers in {city} who signed up after {year}, alphabetically."
    query = ["SELECT name", "FROM customers", f"WHERE city = '{city}'", f"  AND joined > {year}", "ORDER BY name;"]
    return ["customers"], question, query, "Filters customers by city and signup year, sorted by name."


def _signups_per_year(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    city = rng.choice(CITIES)
    question = f"How many customers from {city} signed up in each year?"
    query = ["SELECT joined, COUNT(*) AS signups", "FROM customers", f"WHERE city = '{city}'",
             "GROUP BY joined", "ORDER BY joined;"]  # fmt: skip
    return ["customers"], question, query, f"Counts the {city} customers per signup year."


def _quantity_by_city(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    category, city = rng.choice(CATEGORIES), rng.choice(CITIES)
    question = f"What is the total quantity of {category} products ordered by customers in {city}?"
    query = ["SELECT SUM(o.qty) AS total_quantity", "FROM orders AS o",
             "JOIN customers AS c ON c.id = o.customer_id", "JOIN products AS p ON p.id = o.product_id",
             f"WHERE c.city = '{city}'", f"  AND p.category = '{category}';"]  # fmt: skip
    return ["customers", "products", "orders"], question, query, "Joins orders to customers and products, then sums."


def _most_expensive(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    k, category = rng.randint(2, 10), rng.choice(CATEGORIES)
    question = f"Which {k} products in the {category} category have the highest price?"
    query = ["SELECT name, price", "FROM products", f"WHERE category = '{category}'", "ORDER BY price DESC",
             f"LIMIT {k};"]  # fmt: skip
    return ["products"], question, query, f"Sorts {category} products by price and keeps the top {k}."


def _departments_above(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    salary, year = rng.randint(40, 120) * 1000, rng.choice(YEARS)
    question = f"Which departments have an average salary above {salary} among people hired since {year}?"
    query = ["SELECT dept, AVG(salary) AS avg_salary", "FROM employees", f"WHERE hired >= {year}",
             "GROUP BY dept", f"HAVING AVG(salary) > {salary};"]  # fmt: skip
    return ["employees"], question, query, "Groups recent hires by department and keeps high averages."


def _orders_between(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    start, end = sorted((_date(rng), _date(rng)))
    question = f"How many orders were placed between {start} and {end}, and how many items did they contain?"
    query = ["SELECT COUNT(*) AS order_count, SUM(qty) AS items", "FROM orders",
             f"WHERE day BETWEEN '{start}' AND '{end}';"]  # fmt: skip
    return ["orders"], question, query, "Counts orders and items inside the date range."


def _above_department_average(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    department = rng.choice(DEPARTMENTS)
    question = f"Find the employees in {department} who earn more than the average salary of their department."
    query = ["SELECT name, salary", "FROM employees", f"WHERE dept = '{department}'",
             "  AND salary > (", "    SELECT AVG(salary)", "    FROM employees",
             f"    WHERE dept = '{department}'", "  )", "ORDER BY salary DESC;"]  # fmt: skip
    return ["employees"], question, query, "Compares each salary with a subquery average."


def _spending_per_customer(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    year, k = rng.choice(YEARS), rng.randint(3, 20)
    question = f"Show the {k} customers who spent the most in {year}, with their total spending."
    query = ["SELECT c.name, SUM(o.qty * p.price) AS spent", "FROM orders AS o",
             "JOIN customers AS c ON c.id = o.customer_id", "JOIN products AS p ON p.id = o.product_id",
             f"WHERE o.day LIKE '{year}-%'", "GROUP BY c.id, c.name", "ORDER BY spent DESC",
             f"LIMIT {k};"]  # fmt: skip
    return ["customers", "products", "orders"], question, query, "Sums each customer's spending for the year."


def _raise_prices(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    category, percent = rng.choice(CATEGORIES), rng.randint(2, 30)
    question = f"Raise the price of every {category} product by {percent} percent."
    query = ["UPDATE products", f"SET price = price * {1 + percent / 100:.2f}", f"WHERE category = '{category}';"]
    return ["products"], question, query, f"Multiplies {category} prices by {1 + percent / 100:.2f}."


def _delete_small_orders(rng: random.Random) -> tuple[list[str], str, list[str], str]:
    date, quantity = _date(rng), rng.randint(2, 6)
    question = f"Delete all orders placed before {date} with a quantity below {quantity}."
    query = ["DELETE FROM orders", f"WHERE day < '{date}'", f"  AND qty < {quantity};"]
    return ["orders"], question, query, "Removes old orders with small quantities."


TEMPLATES = (_customers_in_city, _signups_per_year, _quantity_by_city, _most_expensive, _departments_above,
             _orders_between, _above_department_average, _spending_per_customer, _raise_prices,
             _delete_small_orders)  # fmt: skip


def _draw(rng: random.Random) -> tuple[str, str]:
    tables, question, query, explanation = rng.choice(TEMPLATES)(rng)
    schema = ", ".join(TABLES[name] for name in tables)
    prompt = f"-- Tables: {schema}\n-- Question: {question}"
    reference = "".join(f"\n{line}" for line in query) + f"\n-- {explanation}"
    return prompt, reference


def generate(count: int, rng: random.Random, budget: LengthBudget) -> list[Sample]:
    """`count` question / query pairs with distinct prompts."""
    return draw_unique("sql", count, rng, budget, _draw)
