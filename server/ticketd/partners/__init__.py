"""Partner resellers (issue 13): partners, their API keys, the partner principal."""
