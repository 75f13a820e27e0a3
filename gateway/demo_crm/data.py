"""The demo CRM's fixed, made-up data; it never changes, so every run sees the same pages."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    name: str
    company: str
    email: str
    phone: str


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    customer: str
    status: str


@dataclass(frozen=True, slots=True)
class Invoice:
    id: int
    customer: str
    amount: str
    status: str


CONTACTS = (
    Contact(1, "Ada Byron", "Analytical Engines Ltd", "ada@example.com", "+44 20 7946 0001"),
    Contact(2, "Grace Hopper", "Compiler Works", "grace@example.org", "+1 202 555 0102"),
    Contact(3, "Alan Turing", "Bletchley Logistics", "alan@example.net", "+44 1908 640 003"),
    Contact(4, "Katherine Johnson", "Orbital Freight", "kj@example.com", "+1 757 555 0104"),
    Contact(5, "Tim Berners-Lee", "Hypertext & Sons", "tim@example.org", "+41 22 767 0005"),
    Contact(6, "Margaret Hamilton", "Apollo Fit-outs", "mh@example.net", "+1 617 555 0106"),
)

PROJECTS = (
    Project(101, "Warehouse racking", "Bletchley Logistics", "in progress"),
    Project(102, "Office refit", "Compiler Works", "planning"),
    Project(103, "Cold store", "Orbital Freight", "done"),
)

INVOICES = (
    Invoice(1001, "Compiler Works", "GBP 12,400.00", "paid"),
    Invoice(1002, "Bletchley Logistics", "GBP 3,150.00", "due"),
    Invoice(1003, "Orbital Freight", "GBP 48,900.00", "overdue"),
)


def to_csv(header: tuple[str, ...], rows: Iterable[tuple[object, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def contacts_csv() -> str:
    return to_csv(
        ("id", "name", "company", "email", "phone"),
        ((c.id, c.name, c.company, c.email, c.phone) for c in CONTACTS),
    )
