"""Providers' wire shapes (TypedDicts of their JSON) and the tables that map their
values to OpenAI's, one module per provider; no behaviour."""
