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

void *mer_arena_alloc(struct mer_arena *a, size_t n)
{
	struct mer_arena_block *b = a->head;
	size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);

	if (need < n)
		return NULL;
	if (!b || b->cap - b->used < need) {
		size_t cap = need > ARENA_BLOCK ? need : ARENA_BLOCK;

		if (cap > SIZE_MAX - sizeof(*b))
			return NULL;
		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		b->used = 0;
		b->cap = cap;
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

void mer_arena_free(struct mer_arena *a)
{
	struct mer_arena_block *b = a ? a->head : NULL;

	while (b) {
		struct mer_arena_block *next = b->next;
		free(b);
		b = next;
	}
	if (a)
		a->head = NULL;
}
