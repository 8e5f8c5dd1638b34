"""Search tools: result types, engines (local, web, fvqa-cache) and the record/replay cache."""
