"""Generate the demo inputs: examples/contexts.jsonl, examples/jobs.jsonl and examples/batch.jsonl.

Deterministic (a fixed seed, no clock, no network): running it again rewrites identical files.
Six contract-analysis contexts of roughly 1,500-2,500 words of template-built legal text, about
300 compact-shape questions spread over them and shuffled so the cache groups interleave, and a
small file in the OpenAI Batch shape. Usage: ``python examples/make_examples.py [OUT_DIR]``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import orjson

SEED = 20240611
QUESTIONS_PER_CONTRACT = 50

SYSTEM = (
    "You are an expert contract analyst. Answer questions about the agreement below precisely "
    "and conservatively. Cite the section numbers you rely on, quote the operative language "
    "where it matters, and say plainly when the agreement is silent or ambiguous. Do not give "
    "advice beyond what the text supports."
)

CONTRACTS = [
    ("msa-northwind-v3", "Master Services Agreement", "Northwind Analytics, Inc.", "Customer"),
    ("nda-halcyon-v1", "Mutual Non-Disclosure Agreement", "Halcyon Biotech Ltd.", "Recipient"),
    ("lease-harbor-v2", "Commercial Lease Agreement", "Harbor Point Properties LLC", "Tenant"),
    (
        "saas-lumen-v5",
        "Software-as-a-Service Subscription Agreement",
        "Lumen Cloud Corp.",
        "Subscriber",
    ),
    ("supply-ferro-v1", "Supply Agreement", "Ferro Components GmbH", "Buyer"),
    ("psa-arcadia-v2", "Professional Services Agreement", "Arcadia Consulting Group", "Client"),
]
COUNTERPARTIES = [
    "Bluefin Logistics Corp.",
    "Meridian Retail Group",
    "Oakridge Medical Partners",
    "Sable & Finch LLP",
    "Quantum Freight Ltd.",
    "Juniper Capital Holdings",
]
STATES = ["Delaware", "New York", "California", "Illinois", "Texas", "Massachusetts"]
CITIES = ["Wilmington", "New York City", "San Francisco", "Chicago", "Austin", "Boston"]

# (heading, topic used in questions, clause templates); {a} and {b} are the parties
SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "Definitions",
        "defined terms",
        [
            '"Affiliate" means any entity that directly or indirectly controls, is controlled by, '
            "or is under common control with a party, where control means ownership of more than "
            "{pct} percent of the voting interests of such entity.",
            '"Confidential Information" means all non-public information disclosed by one party to '
            "the other, whether orally or in writing, that is designated as confidential or that "
            "reasonably should be understood to be confidential given the nature of the "
            "information and the circumstances of disclosure.",
            '"Deliverables" means all reports, software, documentation and other materials that '
            "{a} provides to {b} under a Statement of Work, excluding Pre-Existing Materials.",
            '"Business Day" means any day other than a Saturday, Sunday or a day on which banks in '
            "{city} are authorized or required by law to close.",
        ],
    ),
    (
        "Term and Renewal",
        "term and renewal",
        [
            "This Agreement commences on the Effective Date and continues for an initial term of "
            "{years} years (the Initial Term), unless terminated earlier in accordance with its "
            "terms.",
            "Upon expiry of the Initial Term, this Agreement renews automatically for successive "
            "renewal terms of {months} months each, unless either party gives written notice of "
            "non-renewal at least {days} days before the end of the then-current term.",
            "Any Statement of Work in effect on the expiry of this Agreement continues to be "
            "governed by this Agreement until its completion or earlier termination.",
        ],
    ),
    (
        "Fees and Payment",
        "fees and payment terms",
        [
            "{b} shall pay the fees set out in each Order Form within {net} days of the date of a "
            "valid invoice. Fees are stated and payable in United States dollars.",
            "Amounts not paid when due accrue interest at the lesser of {rate} percent per month "
            "and the maximum rate permitted by applicable law, from the due date until paid in "
            "full.",
            "{b} may withhold any amount that it disputes in good faith, provided that it notifies "
            "{a} in writing of the basis of the dispute within {days} days of receipt of the "
            "invoice and pays all undisputed amounts when due.",
            "{a} may increase its fees once in each contract year by no more than {pct} percent, "
            "on at least {days} days' prior written notice.",
            "All fees are exclusive of sales, use, value-added and similar taxes, which {b} shall "
            "pay, excluding taxes on the net income of {a}.",
        ],
    ),
    (
        "Confidentiality",
        "confidentiality obligations",
        [
            "Each party shall hold the other party's Confidential Information in confidence, use "
            "it only to perform its obligations or exercise its rights under this Agreement, and "
            "protect it with at least the degree of care it uses for its own information of like "
            "importance, and in no event less than reasonable care.",
            "The obligations in this Section do not apply to information that is or becomes "
            "publicly available without breach, was lawfully known to the recipient before "
            "disclosure, is independently developed without use of the disclosing party's "
            "information, or is received from a third party without a duty of confidence.",
            "A party may disclose Confidential Information where required by law or court order, "
            "provided that it gives the other party prompt notice, where lawful, and reasonable "
            "assistance in seeking a protective order.",
            "The obligations in this Section survive for {years} years after termination of this "
            "Agreement, and indefinitely for trade secrets.",
        ],
    ),
    (
        "Intellectual Property",
        "ownership of intellectual property",
        [
            "Each party retains all right, title and interest in its Pre-Existing Materials. "
            "Nothing in this Agreement transfers ownership of any Pre-Existing Materials.",
            "Upon payment in full, {a} assigns to {b} all right, title and interest in the "
            "Deliverables, excluding any Pre-Existing Materials incorporated in them, for which "
            "{a} grants a non-exclusive, perpetual, royalty-free licence to use them as part of "
            "the Deliverables.",
            "{b} grants {a} a limited, non-transferable licence to use {b}'s materials solely as "
            "necessary to perform the Services during the term.",
        ],
    ),
    (
        "Warranties",
        "warranties and disclaimers",
        [
            "{a} warrants that the Services will be performed in a professional and workmanlike "
            "manner consistent with generally accepted industry standards.",
            "{a} warrants that the Deliverables will conform in all material respects to their "
            "specifications for {days} days after delivery. {b}'s exclusive remedy for breach of "
            "this warranty is re-performance or, if re-performance fails, a refund of the fees "
            "paid for the non-conforming Deliverable.",
            "EXCEPT AS EXPRESSLY SET OUT IN THIS AGREEMENT, NEITHER PARTY MAKES ANY WARRANTY, "
            "EXPRESS OR IMPLIED, INCLUDING ANY IMPLIED WARRANTY OF MERCHANTABILITY, FITNESS FOR A "
            "PARTICULAR PURPOSE OR NON-INFRINGEMENT.",
        ],
    ),
    (
        "Indemnification",
        "indemnification",
        [
            "{a} shall defend {b} against any claim by a third party alleging that the "
            "Deliverables infringe that third party's intellectual property rights, and shall pay "
            "any damages finally awarded or agreed in settlement.",
            "{b} shall defend {a} against any claim arising from {b}'s breach of applicable law or "
            "from materials supplied by {b}, and shall pay any damages finally awarded or agreed "
            "in settlement.",
            "The indemnified party shall give prompt written notice of the claim, grant the "
            "indemnifying party sole control of the defence and settlement, and provide "
            "reasonable cooperation at the indemnifying party's expense. Failure to give prompt "
            "notice relieves the indemnifying party only to the extent it is prejudiced.",
            "The indemnifying party may not settle any claim that imposes any obligation or "
            "admission on the indemnified party without its prior written consent, not to be "
            "unreasonably withheld.",
        ],
    ),
    (
        "Limitation of Liability",
        "limitation of liability",
        [
            "EXCEPT FOR BREACH OF CONFIDENTIALITY, INDEMNIFICATION OBLIGATIONS AND A PARTY'S GROSS "
            "NEGLIGENCE OR WILFUL MISCONDUCT, NEITHER PARTY IS LIABLE FOR ANY INDIRECT, "
            "INCIDENTAL, SPECIAL OR CONSEQUENTIAL DAMAGES, OR FOR LOSS OF PROFITS OR DATA.",
            "EACH PARTY'S AGGREGATE LIABILITY ARISING OUT OF THIS AGREEMENT SHALL NOT EXCEED THE "
            "FEES PAID OR PAYABLE IN THE {months} MONTHS PRECEDING THE EVENT GIVING RISE TO THE "
            "CLAIM.",
            "The limitations in this Section apply regardless of the form of action, whether in "
            "contract, tort, strict liability or otherwise, even if a party has been advised of "
            "the possibility of such damages.",
        ],
    ),
    (
        "Termination",
        "termination rights",
        [
            "Either party may terminate this Agreement for convenience on {days} days' prior "
            "written notice to the other party.",
            "Either party may terminate this Agreement immediately by written notice if the other "
            "party materially breaches it and fails to cure the breach within {cure} days after "
            "receiving written notice describing the breach in reasonable detail.",
            "Either party may terminate this Agreement immediately if the other party becomes "
            "insolvent, makes a general assignment for the benefit of creditors, or becomes the "
            "subject of any bankruptcy or receivership proceeding not dismissed within {days} "
            "days.",
            "On termination, {b} shall pay all fees for Services performed up to the effective "
            "date of termination, and each party shall return or destroy the other party's "
            "Confidential Information.",
        ],
    ),
    (
        "Data Protection",
        "data protection",
        [
            "To the extent {a} processes personal data on behalf of {b}, it does so only on "
            "{b}'s documented instructions and in accordance with the Data Processing Addendum, "
            "which forms part of this Agreement.",
            "{a} shall notify {b} without undue delay, and in any event within {hours} hours, "
            "after becoming aware of a personal data breach affecting {b}'s data.",
            "{a} shall not transfer personal data outside the jurisdiction in which it was "
            "collected except under appropriate safeguards recognised by applicable law.",
        ],
    ),
    (
        "Insurance",
        "insurance requirements",
        [
            "{a} shall maintain, at its own expense, commercial general liability insurance with "
            "limits of not less than ${amount} million per occurrence, and professional liability "
            "insurance with limits of not less than ${amount} million per claim.",
            "On request, {a} shall provide certificates of insurance evidencing the coverage "
            "required by this Section and shall give {days} days' notice of any cancellation.",
        ],
    ),
    (
        "Force Majeure",
        "force majeure",
        [
            "Neither party is liable for any failure or delay in performance caused by events "
            "beyond its reasonable control, including acts of God, war, terrorism, epidemic, "
            "governmental action, labour disputes or failure of public utilities, provided that "
            "it gives prompt notice and uses reasonable efforts to resume performance.",
            "If a force majeure event continues for more than {days} days, either party may "
            "terminate the affected Statement of Work on written notice.",
        ],
    ),
    (
        "Assignment",
        "assignment and change of control",
        [
            "Neither party may assign this Agreement without the prior written consent of the "
            "other party, except to an Affiliate or to a successor in connection with a merger, "
            "acquisition or sale of all or substantially all of its assets.",
            "Any purported assignment in violation of this Section is void. This Agreement binds "
            "and benefits the parties and their permitted successors and assigns.",
        ],
    ),
    (
        "Non-Solicitation",
        "non-solicitation",
        [
            "During the term and for {months} months thereafter, neither party shall solicit for "
            "employment any employee of the other party who was directly involved in the "
            "Services, provided that general advertisements not targeted at such employees are "
            "not a breach of this Section.",
        ],
    ),
    (
        "Governing Law and Disputes",
        "governing law and dispute resolution",
        [
            "This Agreement is governed by the laws of the State of {state}, without regard to its "
            "conflict-of-laws rules.",
            "The parties shall first attempt to resolve any dispute through good-faith "
            "negotiation between senior executives for {days} days. Any dispute not so resolved "
            "shall be finally settled by binding arbitration seated in {city}, before a single "
            "arbitrator, in accordance with the commercial arbitration rules then in effect.",
            "Nothing in this Section prevents either party from seeking injunctive relief in any "
            "court of competent jurisdiction to protect its intellectual property or "
            "Confidential Information.",
        ],
    ),
    (
        "Notices",
        "notices",
        [
            "All notices under this Agreement must be in writing and are deemed given when "
            "delivered personally, one Business Day after dispatch by recognised overnight "
            "courier, or when sent by email with confirmation of receipt, to the addresses set "
            "out in the Order Form.",
        ],
    ),
    (
        "General",
        "miscellaneous provisions",
        [
            "This Agreement, together with its exhibits and each Order Form, is the entire "
            "agreement between the parties and supersedes all prior agreements and "
            "understandings relating to its subject matter.",
            "No amendment or waiver is effective unless in writing and signed by both parties. "
            "A failure to enforce any provision is not a waiver of it.",
            "If any provision of this Agreement is held unenforceable, it shall be enforced to "
            "the maximum extent permissible and the remaining provisions remain in full force.",
            "The parties are independent contractors. Nothing in this Agreement creates a "
            "partnership, joint venture, agency or employment relationship.",
        ],
    ),
]

QUESTIONS = [
    "Analyze Section {s} regarding {topic}.",
    "Summarize the {party}'s obligations under Section {n} ({heading}).",
    "Is there any ambiguity in Section {s}? Explain how a court might read it.",
    "What are the risks to the {party} in the {topic} provisions?",
    "Compare Section {s} with market-standard language on {topic}.",
    "List every deadline or notice period in Section {n}.",
    "Does Section {s} survive termination of the agreement?",
    "Draft a one-paragraph negotiation position for the {party} on {topic}.",
    "How does Section {s} interact with the limitation of liability?",
    "What must happen before a party can rely on Section {s}?",
    "Explain Section {s} in plain English for a non-lawyer.",
    "Identify any obligations in Section {n} that lack a clear deadline.",
]
FOLLOW_UPS = [
    (
        "What is the notice period for termination for convenience?",
        "And what if the notice is late?",
    ),
    ("Who owns the Deliverables?", "Does that change if the fees are unpaid?"),
    ("What is the liability cap?", "Does the cap apply to indemnification claims?"),
]


def _fill(template: str, rng: random.Random, a: str, b: str, city: str, state: str) -> str:
    return template.format(
        a=a,
        b=b,
        city=city,
        state=state,
        pct=rng.choice([5, 10, 25, 50]),
        years=rng.choice([2, 3, 5]),
        months=rng.choice([6, 12, 24]),
        days=rng.choice([15, 30, 45, 60, 90]),
        cure=rng.choice([10, 15, 30]),
        net=rng.choice([30, 45, 60]),
        rate=rng.choice(["1", "1.5", "2"]),
        hours=rng.choice([24, 48, 72]),
        amount=rng.choice([1, 2, 5, 10]),
    )


def make_contract(
    rng: random.Random, index: int
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """One context line and its sections as (number, heading, topic)."""
    cache_id, title, provider, role = CONTRACTS[index]
    counterparty = COUNTERPARTIES[index]
    city, state = CITIES[index], STATES[index]
    a, b = "Provider", role
    target_words = rng.randint(1600, 2400)
    lines = [
        title.upper(),
        "",
        f"This {title} (the Agreement) is entered into as of {rng.randint(1, 28)} "
        f"{rng.choice(['March', 'June', 'September', 'January'])} {rng.randint(2021, 2025)} "
        f"(the Effective Date) by and between {provider} ({a}) and {counterparty} ({b}).",
        "",
    ]
    sections: list[tuple[str, str, str]] = []
    words = sum(len(line.split()) for line in lines)
    order = SECTIONS[:]
    rng.shuffle(order)
    # definitions open an agreement and boilerplate closes it
    order.sort(key=lambda s: {"Definitions": 0, "General": 2}.get(s[0], 1))
    number = 0
    for heading, topic, clauses in order:
        if words >= target_words:
            break
        number += 1
        lines.append(f"{number}. {heading.upper()}")
        for sub, template in enumerate(clauses, 1):
            text = _fill(template, rng, a, b, city, state)
            lines.append(f"{number}.{sub} {text}")
            words += len(text.split())
            sections.append((f"{number}.{sub}", heading, topic))
        lines.append("")
    lines.append(
        f"IN WITNESS WHEREOF, the parties have executed this Agreement by their duly authorised "
        f"representatives as of the Effective Date. {provider}; {counterparty}."
    )
    context: dict[str, Any] = {
        "cache_id": cache_id,
        "system": f"{SYSTEM}\n\n=== {title} ===\n\n" + "\n".join(lines),
    }
    if index == 1:  # one context carries a few-shot exchange to show the "messages" field
        context["messages"] = [
            {"role": "user", "content": "Which law governs this agreement?"},
            {
                "role": "assistant",
                "content": "The agreement is governed by the laws of the State of "
                f"{state} (see the governing law section), without regard to conflict-of-laws "
                "rules.",
            },
        ]
    return context, sections


def make_questions(
    rng: random.Random, cache_id: str, sections: list[tuple[str, str, str]], party: str
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < QUESTIONS_PER_CONTRACT:
        s, heading, topic = rng.choice(sections)
        query = rng.choice(QUESTIONS).format(
            s=s, n=s.split(".")[0], heading=heading, topic=topic, party=party
        )
        if query in seen:
            continue
        seen.add(query)
        job: dict[str, Any] = {"cache_id": cache_id, "query": query}
        roll = rng.random()
        if roll < 0.08:
            job["params"] = {"temperature": 0.2, "max_tokens": rng.choice([256, 512, 1024])}
        elif roll < 0.12:
            job["params"] = {"max_tokens": 128}
        out.append(job)
    # a few multi-turn follow-ups use "messages" instead of "query"
    for first, second in rng.sample(FOLLOW_UPS, 1):
        out.append(
            {
                "cache_id": cache_id,
                "messages": [
                    {"role": "user", "content": first},
                    {"role": "assistant", "content": "Please see the relevant section."},
                    {"role": "user", "content": second},
                ],
            }
        )
    return out


def make_batch(rng: random.Random) -> list[dict[str, Any]]:
    """A small OpenAI Batch file: support questions grouped by the ``cache_id`` extension, and
    sales questions without one, which are grouped automatically by their shared system prompt."""
    support = (
        "You are the support assistant for Northwind Analytics. Answer in at most three "
        "sentences, link to the relevant help-centre article when one exists, and never promise "
        "refunds or credits: route those requests to a human agent."
    )
    sales = (
        "You are a pre-sales assistant for Northwind Analytics. Be accurate about plans and "
        "limits, never quote a custom price, and offer a call with the sales team for any "
        "question about contracts, procurement or volume discounts."
    )
    support_asks = [
        "How do I reset my password?",
        "Can I export my dashboards to PDF?",
        "Why was my card declined?",
        "How do I add a teammate to my workspace?",
        "Is there an API rate limit?",
        "Can I get a refund for last month?",
        "How do I change my billing address?",
        "Where can I find my invoices?",
        "How long do you keep deleted data?",
        "How do I enable two-factor authentication?",
    ]
    sales_asks = [
        "Does Northwind support single sign-on?",
        "Can I schedule a report to run every Monday?",
        "How do I connect a PostgreSQL database?",
        "Can two people edit one dashboard at once?",
        "Do you offer a discount for nonprofits?",
        "Can I embed a chart in our intranet?",
        "What happens when my trial ends?",
        "Is there an on-premises edition?",
        "Which regions can host our data?",
        "Do you sign a data processing agreement?",
    ]
    out = []
    asks: list[tuple[str, str, str | None]] = [(support, a, "support-v1") for a in support_asks]
    asks += [(sales, a, None) for a in sales_asks]
    for i, (system, ask, cache_id) in enumerate(asks, 1):
        line: dict[str, Any] = {
            "custom_id": f"req-{i:03d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1-mini",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": ask},
                ],
                "max_tokens": rng.choice([150, 200, 300]),
            },
        }
        if cache_id is not None:
            line["cache_id"] = cache_id
        out.append(line)
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))


def main(out_dir: Path) -> None:
    rng = random.Random(SEED)
    contexts, jobs = [], []
    for index, (cache_id, _, _, role) in enumerate(CONTRACTS):
        context, sections = make_contract(rng, index)
        contexts.append(context)
        jobs.extend(make_questions(rng, cache_id, sections, role))
    rng.shuffle(jobs)  # interleave the groups, as real batch files do
    numbered = [{"id": f"q-{i:04d}", **job} for i, job in enumerate(jobs, 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "contexts.jsonl", contexts)
    write_jsonl(out_dir / "jobs.jsonl", numbered)
    write_jsonl(out_dir / "batch.jsonl", make_batch(rng))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
