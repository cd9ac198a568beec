"""The one place the service is put together from its adapters.

:func:`build_service` takes the adapters an entrypoint hands it (the embedded mode's bus and
object store, a test's in-process bus, a map evaluation's nothing) and builds the rest from the
settings: object store (``STORE``), results index (``RESULTS_DB``), model source (paths, file://,
s3://, https://) and, when the service consumes, the bus (``BUS``). Entrypoints call it:
``cli.py``, ``embedded.py``, ``api.app.create_app`` without a service, the tests. Nothing else
builds an adapter.

It blocks (the results index is opened and its tables created); async callers run it in a
thread.
"""

from __future__ import annotations

from eostream.inference import fetch
from eostream.inference.catalog import with_catalog
from eostream.inference.deployment import FetchedModels, ModelDeployment, ModelSource
from eostream.inference.pipeline import Pipeline
from eostream.inference.results import ResultsStore, build_results_store
from eostream.inference.service import SERVICE, InferenceService
from eostream.inference.settings import InferenceSettings
from eostream.inference.subscriptions.delivery import Notifier
from eostream.inference.subscriptions.store import SubscriptionStore
from eostream.shared.bus import Bus, build_bus
from eostream.shared.storage import ObjectStore, build_object_store


def build_service(
    settings: InferenceSettings,
    *,
    store: ObjectStore | None = None,
    results: ResultsStore | None = None,
    bus: Bus | None = None,
    models: ModelSource | None = None,
    consume: bool = True,
) -> InferenceService:
    """The service over the given adapters, the missing ones built from ``settings``.

    ``consume=False``: no bus and no consumers (one-off classification, map evaluation). A bus
    handed in stays its builder's to close; one built here is closed by the service.
    """
    if store is None:
        store = build_object_store(settings)
    if results is None:
        results = build_results_store(settings.results_db)
    results = with_catalog(results, settings)  # publishes into the stack's STAC API if set
    if models is None:
        models = FetchedModels.from_settings(settings)
    deployment = ModelDeployment(settings, results, models, store_root=fetch.store_root(store))
    pipeline = Pipeline(settings, store, results, deployment)
    owns_bus = False
    if not consume:
        bus = None
    elif bus is None:
        bus = build_bus(settings, service=SERVICE)
        owns_bus = True
    subscriptions = SubscriptionStore(results.engine)
    subscriptions.init()
    notifier = Notifier(settings.subscriptions, subscriptions, bus)
    pipeline.on_result.append(notifier.on_result)
    return InferenceService(
        settings,
        pipeline=pipeline,
        deployment=deployment,
        bus=bus,
        owns_bus=owns_bus,
        notifier=notifier,
    )
