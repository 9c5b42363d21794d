/*
 * The agent's side of joining the federation ("meridian-agent join"): make
 * or load the site key, pin the broker key, present the token, and explain
 * a refusal in one line. The command-line wiring is the agent's main.
 */
#ifndef MERIDIAN_AGENT_JOIN_H
#define MERIDIAN_AGENT_JOIN_H

#include <stddef.h>

#include "common/keys.h"
#include "common/link.h"

struct mer_agent_join_opts {
	const char *broker_url; /* "tcp://broker:7400" */
	const char *token;	/* "<id>.<secret>"; never logged */
	const char *broker_fp;	/* "SHA256:..." pinned broker key */
	const char *key_path;	/* site key file; created 0600 if missing */
	int timeout_ms;		/* per exchange; 0 = 10000 */
};

struct mer_agent_join_result {
	char site[MER_LINK_NAME_MAX];
	char region[MER_LINK_NAME_MAX];
	char fingerprint[MER_KEY_FP_SIZE]; /* of this site's key */
	int key_created;		   /* a new key file was written */
};

/*
 * Joins. 0 on success; otherwise an err.h code (MER_EPARSE, MER_ENOTFOUND,
 * MER_EEXPIRED, MER_EUSED, MER_EEXIST, MER_EAUTH, MER_EPERM for a key file
 * with a bad mode, MER_EUNREACHABLE / MER_ETIMEDOUT ...) and err gets one
 * line for people ("join refused: the token has expired (expired)").
 */
int mer_agent_join(const struct mer_agent_join_opts *o,
		   struct mer_agent_join_result *r, char *err, size_t errlen);

#endif
