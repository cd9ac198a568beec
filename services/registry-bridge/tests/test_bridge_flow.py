"""The bridge end to end on the embedded adapters: sqlite MLflow, local files, in-process bus."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from prometheus_client import REGISTRY

from eostream.registry_bridge.api import describe_versions
from eostream.registry_bridge.bridge import Bridge
from eostream.registry_bridge.errors import PromotionError
from eostream.registry_bridge.settings import BridgeSettings
from eostream.registry_bridge.worker import needs_gate
from eostream.shared import tags, topics
from eostream.shared.bus import Bus
from eostream.shared.bus.memory import InMemoryBus
from eostream.shared.codec import decode
from eostream.shared.events import ModelPromoted
from eostream.shared.modelcard import BAND_SETS, METADATA_KEY, BandScaling, ModelCard
from eostream.shared.storage import build_object_store

from .conftest import as_, make_bridge, make_service


def bridge_and_bus(settings: BridgeSettings) -> tuple[Bridge, InMemoryBus]:
    bus = InMemoryBus(service="registry-bridge")
    return make_bridge(settings, bus), bus


def promoted(bus: Bus) -> list[ModelPromoted]:
    assert isinstance(bus, InMemoryBus)
    events = [decode(m) for m in bus._logs[topics.MODELS_PROMOTED]]
    return [e for e in events if isinstance(e, ModelPromoted)]


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def exported(metric: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric the bridge exports: sorted label values -> value."""
    return {
        tuple(v for _, v in sorted(s.labels.items())): s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == metric and s.labels.get("model") == "eurosat-landcover"
    }


def accuracy(version: str, role: str) -> float | None:
    return exported("eostream_bridge_holdout_accuracy_ratio").get(
        ("eurosat-landcover", version, role)
    )


def recall_versions() -> dict[str, int]:
    """Version -> number of classes with an exported recall."""
    found: dict[str, int] = {}
    for _cls, _model, version in exported("eostream_bridge_holdout_recall_ratio"):
        found[version] = found.get(version, 0) + 1
    return found


def champion_version() -> float | None:
    return exported("eostream_bridge_champion_version").get(("eurosat-landcover",))


async def test_better_version_is_promoted_and_shipped_worse_is_refused(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    v1 = register(models.better, pt2=True)
    outcome = await bridge.handle_version("eurosat-landcover", v1, "event")
    assert outcome.state == "promoted", outcome.reasons

    [event] = promoted(bus)
    assert (event.name, event.version, event.alias) == ("eurosat-landcover", v1, "champion")
    artifact = Path(event.artifact_uri.removeprefix("file://"))
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == event.sha256
    item = json.loads(Path(event.mlm_item_href.removeprefix("file://")).read_text())
    assert item["properties"]["mlm:input"][0]["bands"] == ["B04", "B03", "B02"]
    t = version_tags("eurosat-landcover", v1)
    assert t[tags.GATE] == "passed" and t[tags.SHIPPED] == "true"
    assert t[tags.STAGE] == "Production"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v1
    eval_run = client.get_run(t[tags.GATE_EVAL_RUN])
    assert "recall/Forest" in eval_run.data.metrics
    # the model-quality gauges: the gated version's scores, as challenger and as champion
    assert champion_version() == float(v1)
    assert accuracy(v1, "challenger") == pytest.approx(float(t[tags.GATE_ACCURACY]), abs=1e-6)
    assert accuracy(v1, "champion") == accuracy(v1, "challenger")
    assert recall_versions() == {v1: 10}
    assert exported("eostream_bridge_holdout_recall_ratio")[
        ("Forest", "eurosat-landcover", v1)
    ] == pytest.approx(eval_run.data.metrics["recall/Forest"])

    v2 = register(models.worse)
    outcome = await bridge.handle_version("eurosat-landcover", v2, "event")
    assert outcome.state == "failed"
    t2 = version_tags("eurosat-landcover", v2)
    assert t2[tags.GATE] == "failed"
    assert any(r.startswith("FAIL") for r in json.loads(t2[tags.GATE_REASONS]))
    assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v1
    assert len(promoted(bus)) == 1
    assert tags.SHIPPED not in t2
    # the failed version is the latest challenger, below the champion it was compared with
    assert champion_version() == float(v1)
    worse, better = accuracy(v2, "challenger"), accuracy(v1, "champion")
    assert worse is not None and better is not None and worse < better
    assert accuracy(v1, "challenger") is None  # replaced: one challenger series per model
    assert recall_versions() == {v1: 10, v2: 10}

    # handled versions are not handled twice
    again = await bridge.handle_version("eurosat-landcover", v2, "reconcile")
    assert again.state == "skipped"


async def test_broken_versions_are_refused_with_reasons_and_never_shipped(
    bridge_settings: BridgeSettings, register: Any, models: Any, export: Any, card: Any
) -> None:
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    no_onnx = register(models.better, with_onnx=False)
    fixed_batch = register(models.better, onnx_bytes=export(models.better, card, dynamic=False))
    wrong_sha = register(models.better, tags={"onnx_sha256": "0" * 64})
    expected = {
        no_onnx: "no ONNX artifact onnx/model.onnx",
        fixed_batch: "batch dimension is fixed",
        wrong_sha: "does not match the artifact",
    }
    for version, text in expected.items():
        outcome = await bridge.handle_version("eurosat-landcover", version, "event")
        assert outcome.state == "refused"
        t = version_tags("eurosat-landcover", version)
        assert t[tags.GATE] == "refused"
        assert any(text in r for r in json.loads(t[tags.GATE_REASONS])), t[tags.GATE_REASONS]
        assert tags.SHIPPED not in t
    store = build_object_store(bridge_settings)
    assert list(store.list("models/")) == []
    assert promoted(bus) == []
    with pytest.raises(PromotionError, match="refused"):
        await bridge.promote("eurosat-landcover", no_onnx, by="alice", reason="try", force=True)


async def test_a_new_class_list_under_the_champions_name_is_refused(
    bridge_settings: BridgeSettings, register: Any, models: Any, card: Any
) -> None:
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    v1 = register(models.better)
    assert (await bridge.handle_version("eurosat-landcover", v1, "event")).state == "promoted"
    other = card.model_copy(update={"classes": tuple(f"class{i}" for i in range(10))})
    v2 = register(models.better, card=other)
    outcome = await bridge.handle_version("eurosat-landcover", v2, "event")
    assert outcome.state == "refused"
    assert "are not the champion v1's" in outcome.reasons[0], outcome.reasons
    assert version_tags("eurosat-landcover", v2)[tags.GATE] == "refused"
    assert [e.version for e in promoted(bus)] == [v1]


async def test_rollback_and_manual_promotion_over_rest(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    import httpx

    service = make_service(bridge_settings, InMemoryBus(service="registry-bridge"))
    bridge, bus = service.bridge, service.bus
    await bus.start()
    v1 = register(models.better)
    v2 = register(models.better)  # same quality: passes (no drop, no required improvement)
    v3 = register(models.worse)
    for v in (v1, v2, v3):
        await bridge.handle_version("eurosat-landcover", v, "event")
    assert [e.version for e in promoted(bus)] == [v1, v2]
    client = mlflow.MlflowClient()
    assert version_tags("eurosat-landcover", v1)[tags.STAGE] == "Archived"

    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        r = await http.post(
            "/models/eurosat-landcover/rollback",
            headers=as_("alice"),
            json={"reason": "v2 misclassifies rivers"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["previous_version"]) == (v1, v2)
        event = promoted(bus)[-1]
        assert (event.version, event.promoted_by) == (v1, "alice")
        assert "v2 misclassifies rivers" in event.reason
        assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v1
        assert champion_version() == float(v1)
        assert accuracy(v1, "champion") is not None and accuracy(v2, "champion") is None
        t2 = version_tags("eurosat-landcover", v2)
        assert (t2[tags.STAGE], t2[tags.ROLLED_BACK_BY]) == ("Archived", "alice")

        r = await http.post(
            "/models/eurosat-landcover/promote",
            headers=as_("bob"),
            json={"version": v3, "reason": "want it"},
        )
        assert r.status_code == 409 and "failed the gate" in r.text
        r = await http.post(
            "/models/eurosat-landcover/promote",
            headers=as_("bob"),
            json={"version": v2, "reason": "rivers fixed upstream"},
        )
        assert r.status_code == 200, r.text
        t2 = version_tags("eurosat-landcover", v2)
        assert (t2[tags.PROMOTED_BY], t2[tags.PROMOTED_REASON]) == ("bob", "rivers fixed upstream")
        assert promoted(bus)[-1].version == v2

        listing = (await http.get("/models/eurosat-landcover")).json()
        assert [row["gate"] for row in listing] == ["passed", "passed", "failed"]
        assert listing[1]["aliases"] == ["champion"]


async def test_champion_alias_moved_in_mlflow_is_announced_or_undone(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    bridge, bus = bridge_and_bus(bridge_settings.model_copy(update={"auto_promote": False}))
    await bus.start()
    v1 = register(models.better)
    v2 = register(models.better, with_onnx=False)
    assert (await bridge.handle_version("eurosat-landcover", v1, "event")).state == "challenger"
    assert (await bridge.handle_version("eurosat-landcover", v2, "event")).state == "refused"
    assert promoted(bus) == []
    client = mlflow.MlflowClient()

    client.set_registered_model_alias("eurosat-landcover", "champion", v1)  # someone, in MLflow
    event = await bridge.sync_champion("eurosat-landcover")
    assert event is not None and event.version == v1 and event.promoted_by == "mlflow-alias"
    assert await bridge.sync_champion("eurosat-landcover") is None  # announced once
    assert champion_version() == float(v1)
    assert accuracy(v1, "champion") == accuracy(v1, "challenger") is not None

    client.set_registered_model_alias("eurosat-landcover", "champion", v2)  # a refused version
    assert await bridge.sync_champion("eurosat-landcover") is None
    assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v1
    assert [e.version for e in promoted(bus)] == [v1]
    assert champion_version() == float(v1)  # the refused version never counts as champion


async def test_a_deleted_champion_alias_still_gates_against_the_live_model(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    """Deleting the champion alias in MLflow does not turn the next version into a "first
    model" judged on the minimum accuracy alone: the gate compares it with the version
    inference serves, and the guard sets the alias back."""
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    v1 = register(models.better)
    assert (await bridge.handle_version("eurosat-landcover", v1, "event")).state == "promoted"
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias("eurosat-landcover", "champion")  # someone, in MLflow

    v2 = register(models.worse)  # above the minimum accuracy? judged against v1 regardless
    outcome = await bridge.handle_version("eurosat-landcover", v2, "event")
    assert outcome.state == "failed", outcome
    assert any("vs champion" in r for r in outcome.reasons), outcome.reasons
    assert not any("no champion yet" in r for r in outcome.reasons)

    assert await bridge.sync_champion("eurosat-landcover") is None  # nothing new to announce
    assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v1
    assert [e.version for e in promoted(bus)] == [v1]


async def test_a_forced_promotion_cut_short_after_its_announcement_is_announced_again(
    bridge_settings: BridgeSettings, register: Any, models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process stops between a forced promotion's publish (inference now serves it) and its
    live_version tag: the override is on record already, so the guard announces the forced
    version again instead of moving the alias back under the model inference serves."""
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    v1 = register(models.better)
    assert (await bridge.handle_version("eurosat-landcover", v1, "event")).state == "promoted"
    v2 = register(models.worse)
    assert (await bridge.handle_version("eurosat-landcover", v2, "event")).state == "failed"

    registry = bridge.promoter.registry
    real = registry.set_model_tag

    def dies_once(name: str, key: str, value: str) -> None:
        monkeypatch.setattr(registry, "set_model_tag", real)
        raise RuntimeError("the process stopped here")

    monkeypatch.setattr(registry, "set_model_tag", dies_once)
    with pytest.raises(RuntimeError, match="stopped here"):
        await bridge.promote("eurosat-landcover", v2, by="alice", reason="hotfix", force=True)
    assert [e.version for e in promoted(bus)] == [v1, v2]  # inference got v2

    event = await bridge.sync_champion("eurosat-landcover")
    assert event is not None and event.version == v2
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("eurosat-landcover", "champion").version) == v2
    live = client.get_registered_model("eurosat-landcover").tags[tags.LIVE_VERSION]
    assert live == v2
    to_v2 = [e for e in bridge.promoter.audit.entries("eurosat-landcover") if e.to_version == v2]
    assert [(e.action, e.by) for e in to_v2] == [("override", "alice")]  # once, as it was


async def test_an_old_champion_made_to_look_unannounced_is_an_alias_move_not_its_promoter(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    """Whether a promotion's publish was lost was read from tags anyone with MLflow write access
    can set: an old champion's stage set back to Production and the alias moved to it was
    announced and audited as its first promoter's ("alice", via auto). The audit log decides."""
    bridge, bus = bridge_and_bus(bridge_settings.model_copy(update={"auto_promote": False}))
    await bus.start()
    name = "eurosat-landcover"
    v1 = register(models.better)
    assert (await bridge.handle_version(name, v1, "event")).state == "challenger"
    await bridge.promote(name, v1, by="alice", reason="first model")
    v2 = register(models.worse)
    await bridge.handle_version(name, v2, "event")
    await bridge.promote(name, v2, by="bob", reason="hotfix", force=True)

    client = mlflow.MlflowClient()  # someone with MLflow write access, not a promoter
    client.set_model_version_tag(name, v1, tags.STAGE, tags.STAGE_PRODUCTION)
    client.set_registered_model_alias(name, "champion", v1)
    event = await bridge.sync_champion(name)
    assert event is not None and event.version == v1 and event.promoted_by == "mlflow-alias"
    last = bridge.promoter.audit.entries(name)[-1]
    assert (last.action, last.by, last.via) == ("alias_accepted", "mlflow-alias", "mlflow")


async def test_a_gate_tag_written_in_mlflow_makes_no_version_champion(
    bridge_settings: BridgeSettings, register: Any, models: Any
) -> None:
    """The bridge read a version's verdict from its ``eostream.gate`` tag, which anyone who can
    write MLflow (the embedded server takes writes from any local process; the trainer's account
    in the stack) can set: a version registered with the tag already passed was promoted
    unscored ("gate passed (resumed)"), and a failed one whose tag was rewritten went live
    through an alias move. The audit log, which only the bridge writes, decides."""
    bridge, bus = bridge_and_bus(bridge_settings)
    await bus.start()
    name = "eurosat-landcover"
    v1 = register(models.better)
    assert (await bridge.handle_version(name, v1, "event")).state == "promoted"

    # registered with a passing verdict of its own making: gated for real, and it fails
    v2 = register(models.worse, tags={tags.GATE: tags.GATE_PASSED})
    assert (await bridge.handle_version(name, v2, "event")).state == "failed"
    assert version_tags(name, v2)[tags.GATE] == tags.GATE_FAILED
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1

    # a failed verdict rewritten, then the alias moved: undone, and the tag restored
    client.set_model_version_tag(name, v2, tags.GATE, tags.GATE_PASSED)
    client.set_registered_model_alias(name, "champion", v2)
    assert await bridge.sync_champion(name) is None
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert "failed the promotion gate" in version_tags(name, v2)[tags.ALIAS_UNDONE_REASON]
    assert (await bridge.handle_version(name, v2, "event")).state == "skipped"
    assert version_tags(name, v2)[tags.GATE] == tags.GATE_FAILED
    with pytest.raises(PromotionError, match="failed the gate"):
        await bridge.promote(name, v2, by="alice", reason="the tag says passed")
    # the live_version tag written beside the alias skipped every check (and a start of the
    # bridge announced that version): undone too, and the tag set back
    client.set_model_version_tag(name, v2, tags.GATE, tags.GATE_PASSED)
    client.set_registered_model_alias(name, "champion", v2)
    client.set_registered_model_tag(name, tags.LIVE_VERSION, v2)
    assert await bridge.sync_champion(name) is None
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert client.get_registered_model(name).tags[tags.LIVE_VERSION] == v1
    assert [e.version for e in promoted(bus)] == [v1]
    verdicts = [
        (e.version, e.verdict) for e in bridge.promoter.audit.entries(name) if e.action == "gated"
    ]
    assert verdicts == [(v1, "passed"), (v2, "failed")]

    # what models list, REST /models and the catalogue show: the verdicts on record, with the
    # tag beside them where it says otherwise (rewritten, or set at registration and not gated)
    client.set_model_version_tag(name, v2, tags.GATE, tags.GATE_PASSED)
    v3 = register(models.worse, tags={tags.GATE: tags.GATE_PASSED})
    rows = describe_versions(bridge.registry, name, lambda: bridge.promoter.audit.entries(name))
    assert [(r.version, r.gate, r.gate_tag) for r in rows] == [
        (v1, "passed", None),
        (v2, "failed", "passed"),
        (v3, "unverified", "passed"),
    ]

    # a value the bridge never writes, over a recorded pass: the reconcile loop queues it and
    # the bridge puts the verdict on record back (else it would queue it on every pass)
    client.set_model_version_tag(name, v1, tags.GATE, "Passed")
    assert needs_gate(version_tags(name, v1), "READY")
    assert (await bridge.handle_version(name, v1, "reconcile")).state == "skipped"
    assert version_tags(name, v1)[tags.GATE] == tags.GATE_PASSED
    assert not needs_gate(version_tags(name, v1), "READY")
    assert [e.version for e in promoted(bus)] == [v1]  # not announced again


class _Bands13(torch.nn.Module):
    """A 13-band classifier (untrained): what `eostream train --bands ms13` registers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(13, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.conv(x).mean(dim=(2, 3)))
        return out


def _ms13_onnx(model: torch.nn.Module, card: ModelCard) -> bytes:
    import io
    import warnings

    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(2, 13, 64, 64),),
            buf,  # type: ignore[arg-type]  # a file object works; the stub says path
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            dynamo=False,
        )
    proto = onnx.load_model_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, card.to_json()
    return bytes(proto.SerializeToString())


async def test_other_bands_under_the_champions_name_fail_the_gate_once(
    bridge_settings: BridgeSettings, register: Any, models: Any, card: ModelCard
) -> None:
    """The champion reads RGB, the new version 13 bands: an ONNX model's channel count is
    fixed, so the champion cannot be scored on the candidate's hold-out. The gate records a
    failed verdict saying so (it used to crash, and retried every reconcile for ever); an
    operator can still move the name to the new bands with --force."""
    lenient = bridge_settings.gate.model_copy(update={"min_accuracy": 0.0})
    bridge, bus = bridge_and_bus(bridge_settings.model_copy(update={"gate": lenient}))
    await bus.start()
    v1 = register(models.better)
    assert (await bridge.handle_version("eurosat-landcover", v1, "event")).state == "promoted"
    ms13 = card.model_copy(
        update={
            "band_set": "ms13",
            "bands": BAND_SETS["ms13"],
            "scaling": tuple(BandScaling(band=b, scale=1.0) for b in BAND_SETS["ms13"]),
        }
    )
    torch.manual_seed(0)
    net = _Bands13()
    v2 = register(net, card=ms13, onnx_bytes=_ms13_onnx(net, ms13))
    outcome = await bridge.handle_version("eurosat-landcover", v2, "event")
    assert outcome.state == "failed", outcome
    assert any("are not the champion v1's rgb" in r for r in outcome.reasons), outcome.reasons
    assert not any("no champion yet" in r for r in outcome.reasons), outcome.reasons
    assert version_tags("eurosat-landcover", v2)[tags.GATE] == "failed"
    # judged once: the next pass skips it
    again = await bridge.handle_version("eurosat-landcover", v2, "reconcile")
    assert again.state == "skipped"
    assert [e.version for e in promoted(bus)] == [v1]
    await bridge.promote("eurosat-landcover", v2, by="alice", reason="move to 13 bands", force=True)
    assert [e.version for e in promoted(bus)] == [v1, v2]
