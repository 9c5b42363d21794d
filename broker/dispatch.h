/*
 * Accessors of dispatch.c added after broker.h's list (the rest of
 * dispatch.c's interface is declared there): reading the sites' latest
 * summaries without copying them, for the placer's snapshot. Nothing here
 * changes dispatch state.
 */
#ifndef MERIDIAN_BROKER_DISPATCH_H
#define MERIDIAN_BROKER_DISPATCH_H

#include <jansson.h>

#include "broker/broker.h"
#include "common/link.h"

/* One site's latest summary as dispatch.c stores it. */
struct mer_report_ref {
	char site[MER_LINK_NAME_MAX];
	/* A reference to the stored summary (without last_heartbeat). Stored
	 * summaries are replaced on arrival, never changed, so this is a
	 * stable copy: read it, never modify it (copy first). */
	json_t *snap;
	long long at; /* wall clock, s: when the broker received it */
};

/*
 * The latest summary of every site that reported since the broker started
 * (the memory copy of docs/STATE.md "Site reports"). *out is malloc'd
 * (NULL when *n is 0); release with mer_dispatch_report_refs_free.
 * MER_ENOMEM when the array cannot be allocated.
 */
int mer_dispatch_report_refs(struct mer_broker *b, struct mer_report_ref **out,
			     size_t *n);
void mer_dispatch_report_refs_free(struct mer_report_ref *refs, size_t n);

#endif
