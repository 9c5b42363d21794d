/*
 * Meridian's one error enum. Fallible functions return int: 0 (MER_OK) or a
 * value from this enum, and give their results through out-parameters.
 * The enum is only ever appended to: values travel in logs and on the wire.
 */
#ifndef MERIDIAN_ERR_H
#define MERIDIAN_ERR_H

enum mer_err {
	MER_OK = 0,
	MER_ENOMEM = 1,       /* allocation failed */
	MER_EINVAL = 2,       /* bad argument or input */
	MER_EIO = 3,          /* local I/O error (files, sockets) */
	MER_ETIMEDOUT = 4,    /* an operation ran past its deadline */
	MER_ENOTFOUND = 5,    /* the thing asked for does not exist */
	MER_EEXIST = 6,       /* the thing to create exists already */
	MER_EUNREACHABLE = 7, /* a server (etcd, scheduler) cannot be reached */
	MER_ECOMPARE = 8,     /* an etcd txn's compares failed */
	MER_EREMOTE = 9,      /* a server answered with an error of its own */
	MER_EPARSE = 10,      /* malformed document (JSON, config, message) */
	MER_ETOOBIG = 11,     /* input over a size or depth limit */
	MER_ECRYPTO = 12,     /* authentication or decryption failed */
	MER_EPERM = 13,       /* not allowed (file modes, roles) */
	MER_EAUTH = 14,       /* credentials missing or wrong */
	MER_ECLOSED = 15,     /* the object was closed or is shutting down */
	MER_EPROTO = 16,      /* a peer broke the protocol */
	MER_ESTATE = 17,      /* the object is not in a state that allows this */
	MER_EBUSY = 18,       /* try again later */
	MER_ECANCELED = 19,   /* the operation was cancelled */
	MER_EEXPIRED = 20,    /* a token, lease or session has expired */
	MER_EUSED = 21,       /* a single-use token was used already */
	MER_EREVOKED = 22,    /* a site or key was revoked */
	MER_EREPLAY = 23,     /* a message counter was seen already */
	MER_ENOTLEADER = 24,  /* this broker is not the leader */
	MER_EUNSUPPORTED = 25 /* a version or feature this build lacks */
};

/* Static English text for an error; never NULL, even for unknown values. */
const char *mer_strerror(int err);

/* A short stable identifier ("unreachable", "compare_failed"), for JSON
 * error bodies and metrics labels. */
const char *mer_errname(int err);

#endif
