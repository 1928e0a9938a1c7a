"""Mapping rules: which project, group, labels and names a ticket gets in an external system.

The rules are `[[sink.rules]]` tables of the config, read in order. A rule
matches a ticket when every non-empty list of its `when` table contains the
ticket's value (tenant, component, priority, environment, status). An empty
`when` matches every ticket. `mapped_fields` folds the matching rules into one
`MappingRule`: a single value comes from the first matching rule that sets it,
and lists gather the values of every matching rule, each value once, in rule
order. Pure functions: no I/O, no clock.

    >>> from ticketflow.config import MappingRule, RuleConditions
    >>> rules = (
    ...     MappingRule(when=RuleConditions(component=("payments",)), project="PAY", labels=("payments",)),
    ...     MappingRule(when=RuleConditions(priority=("P0", "P1")), project="OPS", labels=("urgent",)),
    ... )
    >>> fields = mapped_fields(rules, {"tenant": "acme", "component": "payments", "priority": "P1"})
    >>> fields.project, fields.labels
    ('PAY', ('payments', 'urgent'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ticketflow.config import MappingRule, RuleConditions

CONDITION_FIELDS = tuple(field.name for field in dataclasses.fields(RuleConditions))
_VALUE_FIELDS = tuple(field.name for field in dataclasses.fields(MappingRule) if field.name != "when")

# Which system reads each rule field. A rule that sets a field the chosen sink ignores is a
# config error, so a mistaken rule does not pass silently.
FIELD_SINKS: dict[str, frozenset[str]] = {
    "project": frozenset({"jira"}),
    "issue_type": frozenset({"jira"}),
    "components": frozenset({"jira"}),
    "labels": frozenset({"jira", "zendesk"}),
    "group_id": frozenset({"zendesk"}),
    "assignment_group": frozenset({"servicenow"}),
    "category": frozenset({"servicenow"}),
    "priority_name": frozenset({"jira", "zendesk", "servicenow"}),
}


def rule_matches(rule: MappingRule, ticket: Mapping[str, Any]) -> bool:
    """Tell whether every condition of `rule` holds for `ticket` (a ticket document)."""
    for name in CONDITION_FIELDS:
        allowed = getattr(rule.when, name)
        if allowed and ticket.get(name) not in allowed:
            return False
    return True


def mapped_fields(rules: tuple[MappingRule, ...], ticket: Mapping[str, Any]) -> MappingRule:
    """Fold the rules that match `ticket` into one set of fields (see the module docstring)."""
    chosen: dict[str, Any] = {}
    for rule in rules:
        if not rule_matches(rule, ticket):
            continue
        for name in _VALUE_FIELDS:
            _fold(chosen, name, getattr(rule, name))
    return MappingRule(**chosen)


def fields_set_by(rule: MappingRule) -> list[str]:
    """Return the names of the fields `rule` sets (non-empty values), in declaration order."""
    return [name for name in _VALUE_FIELDS if getattr(rule, name)]


def _fold(chosen: dict[str, Any], name: str, value: Any) -> None:
    if not value:
        return
    if isinstance(value, tuple):
        gathered = list(chosen.get(name, ()))
        for item in value:
            if item not in gathered:
                gathered.append(item)
        chosen[name] = tuple(gathered)
    elif name not in chosen:
        chosen[name] = value
