# The unix port: simulated sensors driven by the train model; the host clock is UTC.
from board import Board as _Board
from model import TrainModel
from sim import SimSensors


class Board(_Board):
    def __init__(self, cfg):
        _Board.__init__(self, cfg)
        sim = cfg.get("sim") or {}
        model = TrainModel(sim.get("seed", cfg["device_id"]), sim.get("fault"),
                           sim.get("fault_start_s", 0.0))
        self.sensors = SimSensors(model)
