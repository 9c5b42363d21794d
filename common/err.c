/*
 * Text for Meridian's error codes. The switches have no default so the
 * compiler (-Wswitch, in -Wall) flags a code added to the enum without text.
 */
#include "err.h"

const char *mer_strerror(int err)
{
	switch ((enum mer_err)err) {
	case MER_OK: return "success";
	case MER_ENOMEM: return "out of memory";
	case MER_EINVAL: return "invalid argument";
	case MER_EIO: return "input/output error";
	case MER_ETIMEDOUT: return "timed out";
	case MER_ENOTFOUND: return "not found";
	case MER_EEXIST: return "already exists";
	case MER_EUNREACHABLE: return "server unreachable";
	case MER_ECOMPARE: return "compare failed";
	case MER_EREMOTE: return "server returned an error";
	case MER_EPARSE: return "malformed input";
	case MER_ETOOBIG: return "input too large";
	case MER_ECRYPTO: return "authentication failed";
	case MER_EPERM: return "permission denied";
	case MER_EAUTH: return "bad or missing credentials";
	case MER_ECLOSED: return "object closed";
	case MER_EPROTO: return "protocol error";
	case MER_ESTATE: return "incorrect state";
	case MER_EBUSY: return "busy, try again";
	case MER_ECANCELED: return "operation cancelled";
	case MER_EEXPIRED: return "expired";
	case MER_EUSED: return "already used";
	case MER_EREVOKED: return "revoked";
	case MER_EREPLAY: return "replayed message";
	case MER_ENOTLEADER: return "not the leader";
	case MER_EUNSUPPORTED: return "not supported";
	}
	return "unknown error";
}

const char *mer_errname(int err)
{
	switch ((enum mer_err)err) {
	case MER_OK: return "ok";
	case MER_ENOMEM: return "no_memory";
	case MER_EINVAL: return "invalid";
	case MER_EIO: return "io";
	case MER_ETIMEDOUT: return "timeout";
	case MER_ENOTFOUND: return "not_found";
	case MER_EEXIST: return "exists";
	case MER_EUNREACHABLE: return "unreachable";
	case MER_ECOMPARE: return "compare_failed";
	case MER_EREMOTE: return "remote_error";
	case MER_EPARSE: return "parse_error";
	case MER_ETOOBIG: return "too_large";
	case MER_ECRYPTO: return "crypto";
	case MER_EPERM: return "permission_denied";
	case MER_EAUTH: return "unauthenticated";
	case MER_ECLOSED: return "closed";
	case MER_EPROTO: return "protocol";
	case MER_ESTATE: return "bad_state";
	case MER_EBUSY: return "busy";
	case MER_ECANCELED: return "cancelled";
	case MER_EEXPIRED: return "expired";
	case MER_EUSED: return "used";
	case MER_EREVOKED: return "revoked";
	case MER_EREPLAY: return "replay";
	case MER_ENOTLEADER: return "not_leader";
	case MER_EUNSUPPORTED: return "unsupported";
	}
	return "unknown";
}
