/*
 * The site summary: what the agent reports to the broker. The "site" part
 * is exactly a site snapshot as policy/fed.c parses it (docs/SITES.md); the
 * "status" part carries what the snapshot has no field for (scheduler
 * version, why the site is unhealthy, datasets that are missing, GPU models
 * left out for want of a price).
 */
#ifndef MERIDIAN_AGENT_SUMMARY_H
#define MERIDIAN_AGENT_SUMMARY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "site-agent/adapter.h"
#include "site-agent/config.h"

struct mer_agent_summary_in {
	/* What the last good probe found; NULL if none ever succeeded. */
	const struct mer_agent_capacity *cap;
	/* NULL or "" when the last probe worked; otherwise why not (the site
	 * is then reported "down"). */
	const char *unhealthy_reason;
	/* Per pool and kind, what stages run for the federation hold now (in
	 * res[].total); NULL for none. */
	const struct mer_agent_capacity *fed_used;
	/* Site key fingerprint, or NULL. */
	const char *fingerprint;
	int64_t now; /* unix seconds for last_heartbeat; 0 = time(NULL) */
};

/*
 * Builds {"site": {...}, "status": {...}} (new reference in *out).
 * Posix dataset paths are checked here: existence on every call, the size
 * of a directory (the sum of its files) walked at most every 10 minutes.
 * A directory of more than 100000 entries is reported present with its
 * configured bytes and listed in status.datasets_unverified ("size not
 * verified"). MER_ENOMEM only.
 */
int mer_agent_summary_build(const struct mer_agent_cfg *cfg,
			    const struct mer_agent_summary_in *in,
			    json_t **out);

/* Size of a posix path: a file's size, or the sum of a directory's files.
 * MER_ENOTFOUND when it does not exist, MER_EIO when unreadable. */
int mer_agent_path_size(const char *path, uint64_t *bytes, char *err,
			size_t errlen);

/* For tests: the walk's entry limit and the size cache's TTL (seconds);
 * clears the cache. */
void mer_agent_summary_walk_limits(size_t max_entries, long long ttl_s);

#endif
