"""docs/settings.md is generated from the topology's dataclasses and kept in sync: a new or
changed setting fails here until the reference is regenerated, and every key is explained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from multiactive.model import topology
from multiactive.model.settings_doc import missing_descriptions, render, sections

DOC = Path(__file__).resolve().parents[3] / "docs" / "settings.md"
REGENERATE = "python -m multiactive.model.settings_doc > docs/settings.md"


def test_docs_settings_md_is_what_the_dataclasses_generate() -> None:
    """The committed reference equals the generated one."""
    assert DOC.read_text() == render(), f"docs/settings.md is out of date; run: {REGENERATE}"


def test_every_setting_is_explained() -> None:
    """Each key has a comment on its field or an entry in settings_doc.DESCRIPTIONS."""
    assert missing_descriptions() == [], "add a comment on the field (or DESCRIPTIONS)"


def test_every_settings_table_and_key_is_in_the_reference() -> None:
    """Every field of every section (limits, replication, audit, sites, links) appears."""
    text = render()
    assert {table for table, _ in sections()} >= {
        "[limits]", "[replication]", "[audit]", "[[sites]]", "[[links]]",
    }  # fmt: skip
    for kind in (topology.Limits, topology.ReplicationSettings, topology.SiteConfig):
        for field in dataclasses.fields(kind):
            assert f"| `{field.name}` |" in text, field.name
