/*
 * Bump allocator behind the parsed documents of policy/. Blocks are chained
 * and freed together; there is no per-object free on purpose.
 */
#include "policy/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_BLOCK 16384
#define ARENA_ALIGN 16

struct mer_arena_block {
	struct mer_arena_block *next;
	size_t used;
	size_t cap;
	_Alignas(ARENA_ALIGN) unsigned char data[];
};

/* The smallest spare block (from mer_arena_reset) with room for need,
 * unlinked: best fit, so a small request does not take the block a big
 * one will want next. */
static struct mer_arena_block *take_spare(struct mer_arena *a, size_t need)
{
	struct mer_arena_block **best = NULL;

	for (struct mer_arena_block **pp = &a->spare; *pp; pp = &(*pp)->next) {
		if ((*pp)->cap >= need && (!best || (*pp)->cap < (*best)->cap))
			best = pp;
	}
	if (!best)
		return NULL;
	struct mer_arena_block *b = *best;
	*best = b->next;
	return b;
}

void *mer_arena_alloc_raw(struct mer_arena *a, size_t n)
{
	struct mer_arena_block *b = a->head;
	size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);

	if (need < n)
		return NULL;
	if (!b || b->cap - b->used < need) {
		size_t cap = need > ARENA_BLOCK ? need : ARENA_BLOCK;

		if (cap > SIZE_MAX - sizeof(*b))
			return NULL;
		b = a->spare ? take_spare(a, need) : NULL;
		if (!b) {
			b = malloc(sizeof(*b) + cap);
			if (!b)
				return NULL;
			b->cap = cap;
		}
		b->used = 0;
		/* A big one-off allocation goes behind the current block so
		 * the remainder of that block stays usable. */
		if (a->head && need > ARENA_BLOCK) {
			b->next = a->head->next;
			a->head->next = b;
		} else {
			b->next = a->head;
			a->head = b;
		}
	}
	void *p = b->data + b->used;
	b->used += need;
	return p;
}

void *mer_arena_alloc(struct mer_arena *a, size_t n)
{
	void *p = mer_arena_alloc_raw(a, n);

	if (p)
		memset(p, 0, n);
	return p;
}

char *mer_arena_strdup(struct mer_arena *a, const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *p = mer_arena_alloc(a, n);
	if (p)
		memcpy(p, s, n);
	return p;
}

static void free_chain(struct mer_arena_block *b)
{
	while (b) {
		struct mer_arena_block *next = b->next;
		free(b);
		b = next;
	}
}

void mer_arena_free(struct mer_arena *a)
{
	if (!a)
		return;
	free_chain(a->head);
	free_chain(a->spare);
	a->head = a->spare = NULL;
}

void mer_arena_reset(struct mer_arena *a)
{
	/* Spare blocks the last cycle did not need are released, so the
	 * arena holds no more than one cycle's worth. */
	free_chain(a->spare);
	a->spare = NULL;
	while (a->head) {
		struct mer_arena_block *b = a->head;
		a->head = b->next;
		b->next = a->spare;
		a->spare = b;
	}
}
