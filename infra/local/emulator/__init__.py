"""The AWS emulator of the local stack: moto's server plus the few things moto 5.2 does not do.

Run as ``python -m infra.local.emulator --host H --port P`` (``process.py`` is that process's spec for the
supervisor). Everything that differs from AWS lives in this package, and only here, one module per gap;
``patches.install()`` checks moto's version and installs them all:

1. Lambda (``lambda_invoke.py``): moto runs handler code only in Docker. Here ``Invoke`` sends the function's
   ``Handler`` (``worker.stages.main.validate_metadata``) and the event to the local Lambda runtime process
   (infra/local/lambda_runtime.py); an exception comes back as a ``FunctionError`` payload with
   ``errorType`` = the exception's class name, as the Lambda runtime does, so Step Functions'
   Retry/Catch match our typed errors exactly as on AWS.
2. EventBridge (``events.py``): moto does not deliver to Lambda targets, and applies no input transformer to
   S3 events. Here matching rules deliver to Lambda targets asynchronously with the InputTransformer applied,
   retry twice, then send the event to the target's dead-letter queue.
3. Kinesis and Firehose (``kinesis.py``, ``firehose.py``): moto's shards lose records under concurrent
   PutRecords (sequence numbers are not assigned atomically); here a shard's writes and reads are serialized.
   moto writes nothing for a Kinesis-sourced delivery stream; here a pump reads the source stream and writes
   objects with the stream's S3 prefix (``!{timestamp:...}`` expanded), buffering for ``PUMP_INTERVAL_S``
   instead of AWS's 60 s minimum.
4. Step Functions execution is switched on (``execute_state_machine``, in ``patches.py``), and
   ``SendTaskFailure`` keeps its ``cause`` (``stepfunctions.py``; moto's response handler drops it, so a
   failed study would lose its reason).
5. Step Functions speed, same results for our state machine (``stepfunctions.py``, ``clients.py``): moto
   parses the ASL definition with ANTLR for every execution, builds a new boto3 client (and a JSONPath parser)
   for every task, and sends each Lambda task through an HTTP request to itself. Here the parsed program is
   reused per definition (its components keep per-execution state in the execution's environment, not in
   themselves), clients and JSONPath expressions are cached, and ``lambda:invoke`` tasks call the Lambda
   backend directly (the task sees the same payload, FunctionError and error names; ``LogType`` is not
   honoured, as moto keeps no logs). Service integrations (``sqs:sendMessage.waitForTaskToken``) and the
   Firehose pump use boto3 clients that reach the backends in this process, as moto's decorator mode does,
   not through HTTP.
6. HTTP speed, same answers (``server.py``): moto's server closes every connection (werkzeug's development
   server), lists its package directory and inspects its response classes for every request. Here
   connections are kept alive (with TCP_NODELAY), and those lookups are done once. Invocations of the local
   Lambda runtime reuse connections too (``lambda_invoke.py``). With 5, this took the emulator's CPU per
   single-image study from about 150 ms to about 50 ms.

What only real AWS can show: Lambda cold starts, memory limits and IAM enforcement; EventBridge's
delivery latency; Firehose's real buffering; Athena (``radstream stats`` runs the same SQL on DuckDB).
"""
