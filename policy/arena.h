/*
 * A bump allocator for the documents of policy/ (jobs, sites, policies,
 * placement inputs): everything a parsed document points to lives in one
 * arena and is released at once. Not a general-purpose allocator.
 */
#ifndef MERIDIAN_POLICY_ARENA_H
#define MERIDIAN_POLICY_ARENA_H

#include <stddef.h>

struct mer_arena_block;

struct mer_arena {
	struct mer_arena_block *head;
	struct mer_arena_block *spare; /* emptied by mer_arena_reset */
};

/* n zeroed bytes aligned for any type, or NULL when memory runs out. */
void *mer_arena_alloc(struct mer_arena *a, size_t n);
/* The same without zeroing, for arrays the caller fills whole. */
void *mer_arena_alloc_raw(struct mer_arena *a, size_t n);
/* A copy of s (NULL gives NULL). */
char *mer_arena_strdup(struct mer_arena *a, const char *s);
/* Frees every block; the arena is empty (and reusable) afterwards. */
void mer_arena_free(struct mer_arena *a);
/* Forgets every allocation but keeps the blocks for the next ones, so a
 * scratch arena used the same way again does not call malloc. */
void mer_arena_reset(struct mer_arena *a);

#endif
