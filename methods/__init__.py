"""Alignment methods (`methods.alignment`) and inversion samplers (`methods.inversion`)."""
