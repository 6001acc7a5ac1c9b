"""The cost-aware scheduler: workload specs, prices, placement policy, the actor, its ledger."""
