import pytest
import torch
from ignite.engine import Engine, Events

from bundle.workflows.common.best_model import BestModelSaver, FinalValidation


class Validator:
    def __init__(self):
        self.epochs = []

    def run(self, epoch):
        self.epochs.append(epoch)


@pytest.mark.parametrize("max_epochs, interval, expected", [(3, 2, [3]), (4, 2, []), (1, 10, [1]), (2, 1, [])])
def test_final_validation(max_epochs, interval, expected):
    trainer = Engine(lambda engine, batch: None)
    validator = Validator()
    FinalValidation(validator, interval).attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert validator.epochs == expected


def test_final_validation_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        FinalValidation(Validator(), 0)


def _evaluate(saver, score):
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=score))
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def test_best_model_memory_survives_a_new_saver(tmp_path):
    net = torch.nn.Linear(2, 1)
    kwargs = {"key_metric_name": "dice", "key_metric_filename": "model.pt"}
    first = BestModelSaver(str(tmp_path), {"model": net}, **kwargs)
    with torch.no_grad():
        net.weight.fill_(1.0)
    _evaluate(first, 0.8)
    state = first.state_dict()
    assert [p for p, _ in state["_saved"]] == [0.8]
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(saved) == {"weight", "bias"}  # a bare state_dict

    # a resumed run: a fresh saver that remembers the best score keeps the better model on disk
    second = BestModelSaver(str(tmp_path), {"model": net}, **kwargs)
    second.load_state_dict(state)
    with torch.no_grad():
        net.weight.fill_(2.0)
    _evaluate(second, 0.5)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1.0).all()
    _evaluate(second, 0.9)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(2.0).all()
