"""The loss terms, in one table, and the variants as lists of their names.

Each row of :data:`TERMS` says what a term is and what it needs; everything else is derived from it:
the config's variants and weight checks (``config.py``), the trainer's weights, term order and which forward
passes a step runs (``trainer.py``), whether a run loads the teacher (``jobs/run.py``), and which knobs a
search samples for a variant (``platform/search_space.active``).

    name  loss (losses.py)     weight     teacher  mixup  hidden  searched when trained
    mle   mle_loss             w_mle      -        -      -       w_mle
    sm    soft_label_loss      a_sm       -        yes    -       a_sm, alpha
    tmkd  tmkd_loss            a_tmkd     yes      yes    -       a_tmkd, alpha, temperature (distance kl)
    kd    kd_loss              a_kd       yes      -      -       a_kd, temperature
    pt    patient_loss         pkd_beta   yes      -      yes     pkd_beta, pkd_layer_map

A term with ``mixup`` reads the mixed rows (the step mixes the batch and runs the student once over
[original; mixed], and the teacher over the mixed rows when such a term needs it); a term with ``teacher`` and
no ``mixup`` reads the teacher's outputs on the original rows (cached per teacher with
``--teacher-outputs cache``); ``hidden``: the hidden states of both models on the original rows.

Adding a term: its function in ``losses.py``, its row here (and its name in the variants that train it), its
test; a new weight field is a config field. A term that reads an output no forward fills yet (say the teacher's
hidden states on the mixed rows) also needs that forward in ``Trainer.compute_losses`` and a field of
:class:`Outputs`. Importing this module does not import torch (the config imports it): a row's ``loss`` imports
``losses`` when it is called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class Outputs:
    """What one micro-batch's forward passes produced; a term's ``loss`` reads the fields it needs."""
    cfg: Any                            # the run's MixKDConfig (distance, temperature...)
    task: Any                           # the TaskSpec (num_labels, regression)
    labels: Any                         # gold labels of the original rows
    logits: Any = None                  # student, original rows
    hidden: Any = None                  # student hidden states, original rows (terms with hidden)
    plan: Any = None                    # the mixup plan (terms with mixup)
    mixed_logits: Any = None            # student, mixed rows
    t_mixed_logits: Any = None          # teacher, mixed rows (terms with teacher and mixup)
    t_logits: Any = None                # teacher, original rows (terms with teacher, without mixup)
    t_hidden: Any = None                # teacher hidden states, original rows
    pkd_pairs: Optional[list] = None    # (student layer, teacher layer) pairs of L_PT


def _mle(o: Outputs):
    from .losses import mle_loss
    return mle_loss(o.logits, o.labels, o.task.regression)


def _sm(o: Outputs):
    from .losses import soft_label_loss
    from .mixup import mix_labels
    targets = mix_labels(o.labels, o.plan, o.task.num_labels, o.task.regression)
    return soft_label_loss(o.mixed_logits, targets, o.task.regression)


def _tmkd(o: Outputs):
    from .losses import tmkd_loss
    return tmkd_loss(o.mixed_logits, o.t_mixed_logits, o.cfg.distance, o.cfg.temperature, o.task.regression)


def _kd(o: Outputs):
    from .losses import kd_loss
    return kd_loss(o.logits, o.t_logits, o.cfg.temperature, o.task.regression)


def _pt(o: Outputs):
    from .losses import patient_loss
    if not o.pkd_pairs:   # 1-layer student: nothing to match, L_PT is 0 (logged as such)
        return o.logits.new_zeros(()).float()
    return patient_loss(o.hidden, o.t_hidden, o.pkd_pairs)


@dataclass(frozen=True)
class Term:
    name: str                             # the key in VARIANT_TERMS and in the logs (loss/<name>)
    loss: Callable[[Outputs], Any]        # Outputs -> 0-d tensor (unweighted)
    weight: str                           # the config field holding its weight (validated >= 0; searched)
    teacher: bool = False                 # needs the frozen teacher
    mixup: bool = False                   # computed on the mixed rows
    hidden: bool = False                  # needs hidden states (student's and teacher's)
    # config fields searched when the term is trained, besides its weight: a name, or (name, {field: value}) for a
    # knob that matters only when those fields have those values
    knobs: tuple = ()

    def searched(self, params: dict[str, Any], default: Callable[[str], Any]) -> set[str]:
        """The config fields a search samples for this term, given a trial's ``params`` (``default(field)``:
        a field's value when ``params`` lacks it)."""
        out = {self.weight}
        for k in self.knobs:
            name, when = (k, {}) if isinstance(k, str) else k
            if all(params.get(f, default(f)) == v for f, v in when.items()):
                out.add(name)
        return out


# The table; its order is the order of the terms in a step's results and logs.
TERMS: dict[str, Term] = {t.name: t for t in (
    Term("mle", _mle, "w_mle"),
    Term("sm", _sm, "a_sm", mixup=True, knobs=("alpha",)),
    Term("tmkd", _tmkd, "a_tmkd", teacher=True, mixup=True, knobs=("alpha", ("temperature", {"distance": "kl"}))),
    Term("kd", _kd, "a_kd", teacher=True, knobs=("temperature",)),
    Term("pt", _pt, "pkd_beta", teacher=True, hidden=True, knobs=("pkd_layer_map",)),
)}

# Which loss terms each variant trains with (the weights multiply the active ones).
VARIANT_TERMS: dict[str, tuple[str, ...]] = {
    "ft": ("mle",),
    "kd": ("mle", "kd"),
    "tmkd": ("mle", "tmkd"),
    "sm+tmkd": ("mle", "sm", "tmkd"),
    "pkd": ("mle", "kd", "pt"),        # PKD (Sun et al. 2019): Hinton KD + the patient loss L_PT
}


def rows(terms) -> list[Term]:
    """The table's rows of ``terms`` (names), in the table's order."""
    return [t for name, t in TERMS.items() if name in terms]


def weight_fields() -> list[str]:
    """The config fields holding a term's weight, in the table's order, each once."""
    return list(dict.fromkeys(t.weight for t in TERMS.values()))


def weights(cfg) -> dict[str, float]:
    """Every term's weight in ``cfg``, by term name."""
    return {t.name: getattr(cfg, t.weight) for t in TERMS.values()}


def needs_teacher(terms) -> bool:
    return any(t.teacher for t in rows(terms))


def uses_mixup(terms) -> bool:
    return any(t.mixup for t in rows(terms))


def teacher_on_mixed(terms) -> bool:
    """The teacher runs on the mixed rows."""
    return any(t.teacher and t.mixup for t in rows(terms))


def teacher_on_originals(terms) -> bool:
    """The teacher's outputs on the original training rows are read (what --teacher-outputs cache stores)."""
    return any(t.teacher and not t.mixup for t in rows(terms))


def uses_hidden(terms) -> bool:
    return any(t.hidden for t in rows(terms))


def knobs() -> set[str]:
    """Every config field some term's search depends on (weights included)."""
    return {t.weight for t in TERMS.values()} | {k if isinstance(k, str) else k[0]
                                                 for t in TERMS.values() for k in t.knobs}


def condition_fields() -> list[str]:
    """The config fields a term's knob depends on (e.g. distance), sorted."""
    return sorted({f for t in TERMS.values() for k in t.knobs if not isinstance(k, str) for f in k[1]})


def searched(terms, params: dict[str, Any], default: Callable[[str], Any]) -> set[str]:
    """The term knobs a search samples for a run training ``terms`` (see :meth:`Term.searched`)."""
    return set().union(*(t.searched(params, default) for t in rows(terms)))
