"""The text wing: templates and their encoding, soft prompts, placements (where the prompts
go), heads (what turns a forward into answers), label words and their searches, calibration,
demonstrations, writing text, and ``PromptModel`` that puts them together."""
