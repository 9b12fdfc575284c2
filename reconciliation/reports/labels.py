"""Words for people: what finance staff read instead of code names, in English or French.

French is the working language of most merchants payrecon serves; ``PAYRECON_LANGUAGE`` (``en``, the
default, or ``fr``) chooses. Code names (``missing_at_provider``, ``orange_money``) stay in every file a
program reads (CSV columns, JSON, ``--json``); these labels are for the columns and texts people read.
No database access here.
"""

from __future__ import annotations

from typing import Literal

Language = Literal["en", "fr"]
LANGUAGES: tuple[Language, ...] = ("en", "fr")

PROVIDERS: dict[str, dict[Language, str]] = {
    "cinetpay": {"en": "CinetPay", "fr": "CinetPay"},
    "mtn_momo": {"en": "MTN MoMo", "fr": "MTN MoMo"},
    "orange_money": {"en": "Orange Money", "fr": "Orange Money"},
    "wave": {"en": "Wave", "fr": "Wave"},
}

CLASSES: dict[str, dict[Language, str]] = {
    "matched": {"en": "Matched", "fr": "Rapproché"},
    "missing_in_ledger": {"en": "Paid at the provider, not recorded by us", "fr": "Payé chez l'opérateur, absent chez nous"},
    "missing_at_provider": {"en": "Recorded paid by us, unknown to the provider", "fr": "Payé chez nous, inconnu de l'opérateur"},
    "amount_mismatch": {"en": "Amounts differ", "fr": "Montants différents"},
    "currency_mismatch": {"en": "Currencies differ", "fr": "Devises différentes"},
    "status_mismatch": {"en": "Statuses differ", "fr": "Statuts différents"},
    "duplicate": {"en": "Reported more than once by the provider", "fr": "Déclaré plusieurs fois par l'opérateur"},
    "fee_variance": {"en": "Fee differs from the tariff", "fr": "Frais différents du barème"},
    "missing_after_sla": {"en": "Still not final after its deadline", "fr": "Toujours en attente après le délai"},
}  # fmt: skip

#: What finance does about each class (docs/reports.md, "Reconciliation classes", says the same).
ACTIONS: dict[str, dict[Language, str]] = {
    "matched": {"en": "Nothing: the provider's fee is booked.", "fr": "Rien : les frais de l'opérateur sont comptabilisés."},
    "missing_in_ledger": {
        "en": "Healed by the run (the customer has access). An unknown reference waits in suspense: find whose money it is, or refund it.",
        "fr": "Régularisé par le rapprochement (le client a son accès). Une référence inconnue reste en attente : trouver à qui est l'argent, ou le rembourser.",
    },
    "missing_at_provider": {
        "en": "Claim it from the provider with the payment's evidence (payrecon payments show REF); write it off if it is lost.",
        "fr": "Le réclamer à l'opérateur avec les preuves du paiement (payrecon payments show REF) ; le passer en perte s'il est perdu.",
    },
    "amount_mismatch": {
        "en": "Claim the difference from the provider, or have its export corrected; write the difference off if it is lost.",
        "fr": "Réclamer la différence à l'opérateur, ou faire corriger son relevé ; passer la différence en perte si elle est perdue.",
    },
    "currency_mismatch": {
        "en": "Ask the provider: a wrong account or a conversion.",
        "fr": "Interroger l'opérateur : mauvais compte ou conversion.",
    },
    "status_mismatch": {
        "en": "Ask the provider whether the money arrived (the customer has access); a refund it reports is applied by the run.",
        "fr": "Demander à l'opérateur si l'argent est arrivé (le client a son accès) ; un remboursement qu'il déclare est appliqué par le rapprochement.",
    },
    "duplicate": {
        "en": "The customer may have paid twice: have the provider refund one.",
        "fr": "Le client a peut-être payé deux fois : faire rembourser l'un des paiements par l'opérateur.",
    },
    "fee_variance": {
        "en": "Claim the overcharge, or update the tariff (PAYRECON_FEES_<PROVIDER>); the fee is posted as charged.",
        "fr": "Réclamer le trop-perçu, ou mettre à jour le barème (PAYRECON_FEES_<PROVIDER>) ; les frais sont comptabilisés tels que prélevés.",
    },
    "missing_after_sla": {
        "en": "Chase it with the customer or the provider; it expires at the provider's give-up point.",
        "fr": "Relancer le client ou l'opérateur ; le paiement expire au délai d'abandon de l'opérateur.",
    },
}  # fmt: skip

CASE_STATUSES: dict[str, dict[Language, str]] = {
    "open": {"en": "Open", "fr": "Ouvert"},
    "investigating": {"en": "Investigating", "fr": "En cours d'examen"},
    "resolved": {"en": "Resolved", "fr": "Résolu"},
    "written_off": {"en": "Written off", "fr": "Passé en perte"},
}

RESOLUTIONS: dict[str, dict[Language, str]] = {
    "healed": {"en": "Healed by a run", "fr": "Régularisé par un rapprochement"},
    "matched_later": {"en": "Matched later", "fr": "Rapproché plus tard"},
    "cleared": {"en": "No longer in the day's data", "fr": "Disparu des données du jour"},
    "refunded": {"en": "Refunded", "fr": "Remboursé"},
    "written_off": {"en": "Written off", "fr": "Passé en perte"},
    "dismissed": {"en": "Dismissed", "fr": "Classé sans suite"},
}

PAYOUT_STATUSES: dict[str, dict[Language, str]] = {
    "matched": {"en": "matched", "fr": "rapproché"},
    "mismatch": {"en": "amount differs", "fr": "montant différent"},
    "pending": {"en": "not paid out yet", "fr": "pas encore reversé"},
    "unexplained": {"en": "unexplained", "fr": "inexpliqué"},
}

PRIORITIES: dict[str, dict[Language, str]] = {
    "high": {"en": "High", "fr": "Haute"},
    "medium": {"en": "Medium", "fr": "Moyenne"},
    "low": {"en": "Low", "fr": "Basse"},
}


#: The words of the day-at-a-glance page and workbook (``reconciliation.reports.glance_render``).
WORDS: dict[str, dict[Language, str]] = {
    "title": {"en": "The day at a glance", "fr": "La journée en un coup d'œil"},
    "business_day": {"en": "business day", "fr": "journée"},
    "providers": {"en": "Providers", "fr": "Opérateurs"},
    "provider": {"en": "Provider", "fr": "Opérateur"},
    "payments": {"en": "Payments", "fr": "Paiements"},
    "paid": {"en": "Paid", "fr": "Encaissé"},
    "success_rate": {"en": "Success rate", "fr": "Taux de succès"},
    "matched": {"en": "Matched", "fr": "Rapproché"},
    "exceptions": {"en": "Exceptions", "fr": "Écarts"},
    "fees": {"en": "Fees", "fr": "Frais"},
    "payouts": {"en": "Payouts", "fr": "Reversements"},
    "not_reconciled": {"en": "not reconciled yet", "fr": "pas encore rapproché"},
    "run_failed": {"en": "run failed", "fr": "rapprochement en échec"},
    "by_class": {"en": "Exceptions of the day by class", "fr": "Écarts de la journée par type"},
    "class": {"en": "Exception", "fr": "Écart"},
    "count": {"en": "Count", "fr": "Nombre"},
    "open": {"en": "Open", "fr": "Ouverts"},
    "at_stake": {"en": "At stake", "fr": "Montant en jeu"},
    "open_cases": {"en": "Open exceptions, every day, oldest and largest first", "fr": "Écarts ouverts, tous jours confondus, les plus anciens et les plus gros d'abord"},
    "case": {"en": "Case", "fr": "Dossier"},
    "age": {"en": "Age (days)", "fr": "Âge (jours)"},
    "priority": {"en": "Priority", "fr": "Priorité"},
    "day": {"en": "Day", "fr": "Jour"},
    "status": {"en": "Status", "fr": "Statut"},
    "assignee": {"en": "Assigned to", "fr": "Attribué à"},
    "reference": {"en": "Reference", "fr": "Référence"},
    "todo": {"en": "What to do", "fr": "Que faire"},
    "overdue": {"en": "overdue", "fr": "en retard"},
    "none_open": {"en": "No open exception: nothing to work on.", "fr": "Aucun écart ouvert : rien à traiter."},
    "chart_rate": {"en": "Success rate per provider, last 30 days (%)", "fr": "Taux de succès par opérateur, 30 derniers jours (%)"},
    "chart_classes": {"en": "Exceptions of the day by class", "fr": "Écarts de la journée par type"},
    "chart_age": {"en": "Open exceptions by age (days)", "fr": "Écarts ouverts par âge (jours)"},
    "chart_settled": {"en": "Settled by us vs reported paid by the providers", "fr": "Encaissé chez nous et déclaré payé par les opérateurs"},
    "ours": {"en": "Settled (payrecon)", "fr": "Encaissé (payrecon)"},
    "theirs": {"en": "Reported (providers)", "fr": "Déclaré (opérateurs)"},
    "case_one": {"en": "open exception", "fr": "écart ouvert"},
    "case_many": {"en": "open exceptions", "fr": "écarts ouverts"},
    "charts": {"en": "Charts", "fr": "Graphiques"},
    "data": {"en": "Chart data", "fr": "Données des graphiques"},
}  # fmt: skip


#: Why an item is an exception, in words (``reports_common.why`` fills in the two sides): what the report's
#: Detail column says when the run recorded nothing more specific.
WHY: dict[str, dict[Language, str]] = {
    "missing_in_ledger": {
        "en": "the provider reports it paid ({theirs}); we had it {ours_status}",
        "fr": "l'opérateur le déclare payé ({theirs}) ; chez nous : {ours_status}",
    },
    "missing_at_provider": {
        "en": "we recorded it paid ({ours}); the provider's data for the day does not have it",
        "fr": "payé chez nous ({ours}) ; absent des données de l'opérateur pour la journée",
    },
    "amount_mismatch": {
        "en": "we recorded {ours}, the provider {theirs}",
        "fr": "{ours} chez nous, {theirs} chez l'opérateur",
    },
    "currency_mismatch": {
        "en": "we recorded {ours}, the provider {theirs}",
        "fr": "{ours} chez nous, {theirs} chez l'opérateur",
    },
    "status_mismatch": {
        "en": "we say {ours_status}, the provider says {theirs_status}",
        "fr": "statut chez nous : {ours_status} ; chez l'opérateur : {theirs_status}",
    },
    "duplicate": {"en": "the provider reports it {lines} times", "fr": "l'opérateur le déclare {lines} fois"},
    "fee_variance": {
        "en": "the provider took a fee of {fee}; its tariff says {expected_fee}",
        "fr": "l'opérateur a prélevé {fee} de frais ; son barème dit {expected_fee}",
    },
    "missing_after_sla": {
        "en": "still {ours_status} past the provider's deadline, and nothing at the provider",
        "fr": "toujours {ours_status} après le délai de l'opérateur, et rien chez l'opérateur",
    },
}
NOT_AT_ALL: dict[Language, str] = {"en": "not at all", "fr": "rien"}


#: The words of a run's HTML page (``reconciliation.reports.render``); ``{}`` fields are filled in there.
RUN_WORDS: dict[str, dict[Language, str]] = {
    "title": {
        "en": "Reconciliation {provider} {day} (run {run})",
        "fr": "Rapprochement {provider} du {day} (exécution {run})",
    },
    "balanced": {"en": "Balanced: {items}, all matched.", "fr": "Équilibré : {items}, tous rapprochés."},
    "headline": {
        "en": "{exceptions} of {items} ({healed} by the run, {act} to act on).",
        "fr": "{exceptions} sur {items} ({healed} par le rapprochement, {act} à traiter).",
    },
    "healed_one": {"en": "healed", "fr": "régularisé"},
    "healed_many": {"en": "healed", "fr": "régularisés"},
    "item": {"en": "item", "fr": "ligne"},
    "items": {"en": "items", "fr": "lignes"},
    "exception": {"en": "exception", "fr": "écart"},
    "exceptions": {"en": "exceptions", "fr": "écarts"},
    "Exceptions": {"en": "Exceptions", "fr": "Écarts"},
    "none": {"en": "None.", "fr": "Aucun."},
    "more_exceptions": {
        "en": "… and {n} more: see the CSV or XLSX report.",
        "fr": "… et {n} de plus : voir le rapport CSV ou XLSX.",
    },
    "healed": {"en": " (healed)", "fr": " (régularisé)"},
    "h_class": {"en": "Class", "fr": "Type"},
    "h_reference": {"en": "Reference", "fr": "Référence"},
    "h_txn": {"en": "Provider txn", "fr": "Transaction opérateur"},
    "h_internal": {"en": "Internal", "fr": "Chez nous"},
    "h_provider": {"en": "Provider", "fr": "Opérateur"},
    "h_difference": {"en": "Difference", "fr": "Différence"},
    "h_statuses": {"en": "Status (ours / theirs)", "fr": "Statut (nous / opérateur)"},
    "h_detail": {"en": "Detail", "fr": "Détail"},
    "payouts": {"en": "Payouts ({n}, {unmatched} not matched)", "fr": "Reversements ({n}, {unmatched} non rapprochés)"},
    "no_payouts": {"en": "None reported for this day.", "fr": "Aucun déclaré pour cette journée."},
    "h_payout": {"en": "Payout", "fr": "Reversement"},
    "h_status": {"en": "Status", "fr": "Statut"},
    "h_payments": {"en": "Payments", "fr": "Paiements"},
    "h_paid_out": {"en": "Paid out", "fr": "Reversé"},
    "h_net": {"en": "Net of payments", "fr": "Net des paiements"},
    "h_bank": {"en": "Ledger (bank)", "fr": "Comptabilité (banque)"},
    "not_posted": {"en": "not posted", "fr": "non comptabilisé"},
    "posted": {"en": "journal {journal} (run {run})", "fr": "écriture {journal} (exécution {run})"},
    "payouts_note": {
        "en": "Matched payouts are posted once to the bank account (Dr bank / Cr provider clearing); the others are for finance to look at.",
        "fr": "Les reversements rapprochés sont comptabilisés une fois en banque (débit banque / crédit compte opérateur) ; les autres sont à examiner.",
    },
    "totals": {"en": "Totals", "fr": "Totaux"},
    "h_currency": {"en": "Currency", "fr": "Devise"},
    "h_count": {"en": "Count", "fr": "Nombre"},
    "h_healed": {"en": "Healed", "fr": "Régularisés"},
    "h_internal_total": {"en": "Internal total", "fr": "Total chez nous"},
    "h_provider_total": {"en": "Provider total", "fr": "Total opérateur"},
    "h_fees": {"en": "Fees", "fr": "Frais"},
    "their_currency": {"en": " (the provider's currency)", "fr": " (devise de l'opérateur)"},
    "changes_first": {"en": "Changes since the previous run", "fr": "Changements depuis l'exécution précédente"},
    "first_run": {"en": "First run of this business day.", "fr": "Première exécution de cette journée."},
    "changes": {"en": "Changes since run {previous} ({n})", "fr": "Changements depuis l'exécution {previous} ({n})"},
    "h_was": {"en": "Was", "fr": "Avant"},
    "h_now": {"en": "Now", "fr": "Maintenant"},
    "not_before": {"en": "(not in previous run)", "fr": "(absent de l'exécution précédente)"},
    "not_now": {"en": "(not in this run)", "fr": "(absent de cette exécution)"},
    "more_changes": {"en": "… and {n} more: see the JSON report.", "fr": "… et {n} de plus : voir le rapport JSON."},
    "no_change": {"en": "No item changed class.", "fr": "Aucune ligne n'a changé de type."},
    "run": {"en": "Run", "fr": "Exécution"},
    "generated": {"en": "Generated by payrecon.", "fr": "Produit par payrecon."},
}


def label(table: dict[str, dict[Language, str]], code: str | None, language: Language = "en") -> str:
    """The label of ``code`` in ``language``; the code itself when it has none (never an empty cell)."""
    if code is None:
        return ""
    entry = table.get(code)
    return entry[language] if entry is not None else code


def plural(count: int, one: str, many: str, language: Language = "en") -> str:
    """``1 case``, ``1,200 cases``, ``0 cases``; in French 0 and 1 take the singular (``0 dossier``)."""
    singular = count == 1 or (language == "fr" and count == 0)
    return f"{count:,} {one if singular else many}"
