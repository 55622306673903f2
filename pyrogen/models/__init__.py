"""The generative processes: z ~ p_z(z) pushed through a learned transformation."""
