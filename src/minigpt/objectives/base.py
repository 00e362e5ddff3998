"""The objective contract, where the objectives import it from; it lives in
`minigpt.train.objective`, beside the loop that calls it."""

from minigpt.train.objective import BatchProducer, LossOutput, Objective

__all__ = ["BatchProducer", "LossOutput", "Objective"]
