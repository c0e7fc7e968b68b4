"""The retention forms are one vocabulary, spelled once (vir_lightning/retention/forms.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vir_lightning.retention.forms import (
    AUTO,
    EXACT_FORMS,
    MODEL_FORMS,
    OP_FORMS,
    STREAMING,
    TRAIN_FORMS,
    check_form,
    whole_image_form,
)

ROOT = Path(__file__).resolve().parents[1]
FORMS_FILE = ROOT / "vir_lightning" / "retention" / "forms.py"
#: Other vocabularies that also have a member called "auto", each defined once in its own home.
OTHER_AUTOS = {
    ROOT / "vir_lightning" / "retention" / "backends" / "__init__.py",  # the retention backend "auto"
    ROOT / "vir_lightning" / "data" / "large_image.py",  # the image reader "auto"
}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _spelled_forms(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in MODEL_FORMS
        and id(node) not in docstrings
    ]


def test_the_form_names_are_spelled_only_in_forms_py():
    sources = sorted((ROOT / "vir_lightning").rglob("*.py")) + sorted((ROOT / "downstream").rglob("*.py"))
    assert FORMS_FILE in sources
    spelled = {p: _spelled_forms(p) for p in sources if p != FORMS_FILE}
    offenders = [
        f"{p.relative_to(ROOT)}:{line}: {value!r}"
        for p, found in spelled.items()
        for line, value in found
        if not (value == AUTO and p in OTHER_AUTOS)
    ]
    assert not offenders, (
        "spell the retention forms through vir_lightning.retention.forms (PARALLEL, AUTO,"
        " MODEL_FORMS, …), not as literals:\n" + "\n".join(offenders)
    )
    assert _spelled_forms(FORMS_FILE)  # the definition is where the test looks for it


def test_the_subsets_nest():
    assert EXACT_FORMS == ("parallel", "recurrent", "chunkwise")
    assert OP_FORMS == (*EXACT_FORMS, "auto")
    assert MODEL_FORMS == (*OP_FORMS, "streaming")
    assert TRAIN_FORMS == OP_FORMS


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("fast", None, "model"),
            r"^mode='fast' is unknown; expected one of \('parallel', 'recurrent', 'chunkwise',"
            r" 'auto', 'streaming'\)$",
        ),
        (("fast", None, "op", "mode"), r"^mode: mode='fast' is unknown"),
        (("streaming", None, "op"), r"is unknown; expected one of .*'auto'\).*a form of a whole model"),
        (("streaming", None, "train", "train_mode"), r"^train_mode='streaming' is inference-only"),
        (("chunkwise", 0, "model", "eval_mode"), r"^eval_mode: chunk_size=0 is invalid; expected a positive integer"),
        (("chunkwise", True, "op"), r"^chunk_size=True is invalid"),
    ],
)
def test_check_form_names_the_option_and_the_choices(args, message):
    with pytest.raises(ValueError, match=message):
        check_form(*args)


def test_check_form_accepts_each_scopes_forms():
    for scope, forms in (("op", OP_FORMS), ("model", MODEL_FORMS), ("train", TRAIN_FORMS)):
        for form in forms:
            check_form(form, 3, scope)


def test_streaming_runs_its_layers_in_the_whole_image_form():
    assert whole_image_form(STREAMING, 4) == (AUTO, None)
    assert whole_image_form("chunkwise", 4) == ("chunkwise", 4)


# -- the train/eval switch (TrainEvalFormsMixin) through the classifier; the mm backbone's is in test_downstream


def test_the_classifier_switches_forms_through_the_mixin():
    from vir_lightning.models.retention_layer import TrainEvalFormsMixin
    from vir_lightning.tasks.classification import ImageClassifier

    module = ImageClassifier(
        num_classes=10, img_size=28, in_chans=1, train_mode="parallel", eval_mode="chunkwise", eval_chunk_size=2
    )
    assert isinstance(module, TrainEvalFormsMixin)
    assert module.model.retention_mode == "parallel"
    module.on_validation_epoch_start()
    assert (module.model.retention_mode, module.model.retention_layers()[0].chunk_size) == ("chunkwise", 2)
    module.on_validation_epoch_end()
    assert module.model.retention_mode == "parallel"
    module.on_test_epoch_start()
    assert module.model.retention_mode == "chunkwise"
    module.on_train_epoch_start()
    assert module.model.retention_mode == "parallel"


def test_a_model_that_cannot_stream_is_refused_streaming_eval_when_built():
    from vir_lightning.tasks.classification import ImageClassifier

    with pytest.raises(ValueError, match=r"^eval_mode: HybridViR has no streaming mode"):
        ImageClassifier(model_name="hvir_nano", num_classes=10, img_size=32, in_chans=1, eval_mode="streaming")
    with pytest.raises(ValueError, match=r"^eval_mode: mode='banana' is unknown"):
        ImageClassifier(num_classes=10, img_size=28, in_chans=1, eval_mode="banana")


# -- one name per concept: the op's flag is class_token (timm's name; cls_token is the model's parameter)


def test_the_former_name_cls_token_still_works_with_a_warning():
    import torch

    from vir_lightning.retention import retention, retention_decay_matrix

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 13, 4) for _ in range(3))
    rates = [0.9, 0.8]
    new = retention(q, k, v, rates, grid_shape=(3, 4), class_token=True)
    with pytest.warns(FutureWarning, match="renamed class_token"):
        old = retention(q, k, v, rates, grid_shape=(3, 4), cls_token=True)
    assert torch.equal(new, old)
    with pytest.warns(FutureWarning, match="renamed class_token"):
        old_matrix = retention_decay_matrix(13, rates, grid_shape=(3, 4), cls_token=True)
    assert torch.equal(old_matrix, retention_decay_matrix(13, rates, grid_shape=(3, 4), class_token=True))
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="cls_token is the former name of class_token"):
        retention(q, k, v, rates, grid_shape=(3, 4), class_token=True, cls_token=False)
