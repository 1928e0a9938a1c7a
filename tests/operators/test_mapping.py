"""Mapping rules: which fields a ticket gets in an external system."""

import doctest

from ticketflow.config import MappingRule, RuleConditions
from ticketflow.operators import mapping
from ticketflow.operators.mapping import fields_set_by, mapped_fields, rule_matches

TICKET = {"tenant": "acme", "component": "payments", "priority": "P1",
          "environment": "prod-us-west-2", "status": "open"}


def test_docstring_example_holds():
    assert doctest.testmod(mapping).failed == 0


def test_empty_conditions_match_every_ticket():
    assert rule_matches(MappingRule(), TICKET)


def test_every_condition_must_hold():
    rule = MappingRule(when=RuleConditions(tenant=("acme",), status=("review",)))
    assert not rule_matches(rule, TICKET)
    assert rule_matches(rule, {**TICKET, "status": "review"})


def test_a_missing_value_matches_no_condition_on_it():
    rule = MappingRule(when=RuleConditions(component=("payments",)))
    assert not rule_matches(rule, {**TICKET, "component": None})


def test_first_matching_rule_sets_single_values():
    rules = (
        MappingRule(when=RuleConditions(tenant=("globex",)), project="GLX"),
        MappingRule(when=RuleConditions(priority=("P1",)), project="OPS", issue_type="Incident"),
        MappingRule(project="SUP", issue_type="Task"),
    )
    fields = mapped_fields(rules, TICKET)
    assert (fields.project, fields.issue_type) == ("OPS", "Incident")


def test_lists_gather_every_matching_rule_once_in_order():
    rules = (
        MappingRule(labels=("support", "support")),
        MappingRule(when=RuleConditions(component=("payments",)), labels=("payments", "support")),
        MappingRule(when=RuleConditions(component=("search",)), labels=("search",)),
    )
    assert mapped_fields(rules, TICKET).labels == ("support", "payments")


def test_no_matching_rule_leaves_every_field_empty():
    rules = (MappingRule(when=RuleConditions(tenant=("globex",)), project="GLX"),)
    assert mapped_fields(rules, TICKET) == MappingRule()


def test_fields_set_by_names_only_non_empty_fields():
    assert fields_set_by(MappingRule(project="PAY", labels=("a",))) == ["project", "labels"]
