"""Fine-tuning: what trains, what autograd keeps (checkpointing), the loss and the step."""
