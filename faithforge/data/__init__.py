"""Training and evaluation data: the template and grounded-qa tasks, the user's own documents, preference pairs
(synthetic, imported, on-policy) and the overlap guard."""
