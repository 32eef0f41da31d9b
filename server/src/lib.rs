//! The recommendation service (lazy retrieval + rerank over HTTP and gRPC). Built in issue #4.
