"""The torch.distributed executor for lowered ``ir.Schedule``s (DESIGN.md, "Executor").
Its handlers, comms and probes arrive with the executor issue."""
