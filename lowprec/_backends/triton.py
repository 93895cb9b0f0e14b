"""Triton kernels are the subject of a later issue; importing this backend says so."""

raise ImportError("lowprec has no Triton kernels yet (tracked in the fast-backends issue)")
