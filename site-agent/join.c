/*
 * Agent-side join: key file, then mer_link_join, then a one-line verdict.
 * Not the agent's config writing or its long-running link (agent main).
 */
#include "join.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

static const char *why(int rv)
{
	switch (rv) {
	case MER_EPARSE:
		return "the token is malformed (want <id>.<secret>)";
	case MER_ENOTFOUND:
		return "the token is unknown";
	case MER_EEXPIRED:
		return "the token has expired";
	case MER_EUSED:
		return "the token was used already";
	case MER_EEXIST:
		return "the site has joined already (revoke it first)";
	case MER_EAUTH:
		return "the broker's key does not match --broker-key";
	case MER_EINVAL:
		return "bad --broker-key or broker URL";
	case MER_EUNSUPPORTED:
		return "the broker does not accept joins";
	case MER_EUNREACHABLE:
	case MER_ETIMEDOUT:
		return "cannot reach the broker";
	}
	return mer_strerror(rv);
}

int mer_agent_join(const struct mer_agent_join_opts *o,
		   struct mer_agent_join_result *r, char *err, size_t errlen)
{
	struct mer_link_client_opts lo;
	struct mer_keypair kp;
	char kerr[512] = "", tid[96];
	int rv;

	memset(r, 0, sizeof(*r));
	if (err && errlen)
		err[0] = '\0';
	rv = mer_keypair_load_or_create(o->key_path, &kp, &r->key_created, kerr,
					sizeof(kerr));
	if (rv != 0) {
		if (err && errlen)
			snprintf(err, errlen, "join failed: %s (%s)", kerr,
				 mer_errname(rv));
		return rv;
	}
	mer_key_fingerprint(kp.pk, r->fingerprint);
	memset(&lo, 0, sizeof(lo));
	lo.url = o->broker_url;
	lo.key = &kp;
	lo.broker_fp = o->broker_fp;
	lo.request_timeout_ms = o->timeout_ms;
	mer_redact_token(o->token, tid, sizeof(tid));
	rv = mer_link_join(&lo, o->token, r->site, r->region);
	mer_keypair_wipe(&kp);
	if (rv == 0) {
		mer_info("joined the federation",
			 "site=%s region=%s fingerprint=%s token_id=%s",
			 r->site, r->region, r->fingerprint, tid);
		return 0;
	}
	if (err && errlen)
		snprintf(err, errlen, "join refused: %s (%s)", why(rv),
			 mer_errname(rv));
	mer_warn("join failed", "broker=%s token_id=%s error=%s", o->broker_url,
		 tid, mer_errname(rv));
	return rv;
}
