"""Kubeflow Pipelines components of the labelling room: thin adapters over ``jobs``.

As in the training room, every import sits inside the body (KFP ships only the
function's source) and the project image carries the code. For the same reason each
body names its logger ``qcloop_labelling.kfp_components`` itself: ``__name__`` there is
KFP's generated module, not this one.
"""

from typing import NamedTuple

from kfp import dsl

from qcloop import QCLOOP_IMAGE

_OPTIONS = {"base_image": QCLOOP_IMAGE, "install_kfp_package": False}


@dsl.component(**_OPTIONS)
def sync_in_step() -> int:
    """New raw images -> Label Studio tasks with pre-annotations; return how many."""
    import logging

    from qcloop.settings import step_settings
    from qcloop_labelling.jobs import sync_in_job

    report = sync_in_job(step_settings())
    logging.getLogger("qcloop_labelling.kfp_components").info(
        "%d new tasks (%d pre-annotated)", report.created, report.with_predictions
    )
    return report.created


@dsl.component(**_OPTIONS)
def round_step() -> NamedTuple("RoundOutputs", created=bool, version=str):
    """Verified labels -> next dataset version if anything is new."""
    import logging
    from collections import namedtuple

    from qcloop.settings import step_settings
    from qcloop_labelling.jobs import round_job

    result = round_job(step_settings())
    version = result.manifest.version if result.manifest else ""
    logging.getLogger("qcloop_labelling.kfp_components").info(
        "counts %s; version %s, new: %s", result.export.counts, version or "-", result.created
    )
    return namedtuple("RoundOutputs", ["created", "version"])(result.created, version)
