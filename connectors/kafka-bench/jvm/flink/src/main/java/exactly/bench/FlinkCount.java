package exactly.bench;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.CoreOptions;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.sink.KafkaSinkBuilder;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.KafkaSourceBuilder;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * The Apache Flink contender of the Kafka benchmark: an exactly-once running
 * count per key, from one Kafka topic to another.
 *
 * <p>The job reads the input topic from the earliest offsets with
 * {@code isolation.level=read_committed}, keys each record by its Kafka key,
 * keeps a {@code ValueState<Long>} count per key in the heap ("hashmap")
 * state backend, and writes one record per input record to the output topic:
 * the same key, and the value {@code "<input value> <count>"} where the count
 * includes this record. The {@link KafkaSink} writes with
 * {@link DeliveryGuarantee#EXACTLY_ONCE}, committing one Kafka transaction per
 * subtask and checkpoint; checkpoints are exactly-once (aligned) and taken
 * every {@code --interval-ms}, into the filesystem checkpoint storage in the
 * program's temporary directory.
 *
 * <p>Object reuse is on ({@code pipeline.object-reuse}): Flink passes a record
 * to the next chained operator without copying it, and the network input of
 * the count may deserialize successive records into one and the same
 * {@code Tuple2}. That is safe here because no function keeps or changes a
 * record after its call returns: the source's deserializer makes a new
 * {@code Tuple2} per Kafka record, the key selector returns the (immutable)
 * {@code String} key, {@code CountPerKey} only reads its input, keeps a
 * {@code Long} in state and emits a new {@code Tuple2}, and the sink's
 * serializer turns each record into a new {@link ProducerRecord} of fresh
 * byte arrays before it returns.
 *
 * <p>Kafka client properties given with {@code --consumer-property} and
 * {@code --producer-property} go to the source's and the sink's builders
 * after the program's own settings, so they override them (only
 * {@code auto.offset.reset} is always set by the source builder, from the
 * starting offsets). At start the program prints one {@code settings: ...}
 * line to stderr with the settings in effect that matter for comparing it
 * with the other contenders.
 *
 * <p>It runs on an embedded MiniCluster (no web UI) whose temporary files
 * live in a directory of its own, logs at WARN to stderr, prints
 * {@code ready} to stdout once the job is submitted, and runs until the
 * process is stopped: on SIGTERM a shutdown hook stops the job with a
 * savepoint, which commits the sink's open transactions, and deletes that
 * directory.
 */
public final class FlinkCount {

    /** The options that are required, each given exactly once as {@code --name value}. */
    private static final Set<String> OPTIONS =
            Set.of("bootstrap", "input", "output", "interval-ms", "parallelism", "id");

    /** Repeatable option: a Kafka producer property for the sink, {@code KEY=VALUE}. */
    private static final String PRODUCER_PROPERTY = "producer-property";

    /** Repeatable option: a Kafka consumer property for the source, {@code KEY=VALUE}. */
    private static final String CONSUMER_PROPERTY = "consumer-property";

    /** Producer and broker-side bound for an open transaction (the broker allows at most 20 min). */
    private static final String TRANSACTION_TIMEOUT_MS = "600000";

    /** How long SIGTERM waits for the job to stop. */
    private static final Duration STOP_TIMEOUT = Duration.ofSeconds(30);

    private FlinkCount() {}

    /**
     * Builds the job, submits it to a local MiniCluster, prints {@code ready},
     * and waits for it; the job only ends when it fails for good, or when the
     * process is stopped.
     *
     * @param args {@code --bootstrap HOST:PORT --input TOPIC --output TOPIC
     *     --interval-ms N --parallelism N --id UNIQUE}, where {@code --id} is
     *     the sink's transactional id prefix and the source's consumer group,
     *     plus any number of {@code --producer-property KEY=VALUE} and
     *     {@code --consumer-property KEY=VALUE}
     * @throws Exception when the job cannot be submitted, or fails
     */
    public static void main(String[] args) throws Exception {
        Options options = parseOptions(args);
        String bootstrap = options.get("bootstrap");
        String id = options.get("id");
        long intervalMs = Long.parseLong(options.get("interval-ms"));
        int parallelism = Integer.parseInt(options.get("parallelism"));

        Path tmpDir = Files.createTempDirectory("flink-count-");
        Configuration conf = new Configuration();
        conf.set(CoreOptions.TMP_DIRS, tmpDir.toString());
        conf.set(PipelineOptions.OBJECT_REUSE, true);
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
        conf.set(
                CheckpointingOptions.CHECKPOINTS_DIRECTORY,
                tmpDir.resolve("checkpoints").toUri().toString());
        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.enableCheckpointing(intervalMs, CheckpointingMode.EXACTLY_ONCE);

        KafkaSourceBuilder<Tuple2<String, String>> sourceBuilder =
                KafkaSource.<Tuple2<String, String>>builder()
                        .setBootstrapServers(bootstrap)
                        .setTopics(options.get("input"))
                        .setGroupId(id)
                        .setStartingOffsets(OffsetsInitializer.earliest())
                        .setProperty("isolation.level", "read_committed")
                        .setDeserializer(new KeyValueDeserializer());
        options.consumer().forEach(sourceBuilder::setProperty);
        KafkaSource<Tuple2<String, String>> source = sourceBuilder.build();

        KafkaSinkBuilder<Tuple2<String, String>> sinkBuilder =
                KafkaSink.<Tuple2<String, String>>builder()
                        .setBootstrapServers(bootstrap)
                        .setRecordSerializer(new KeyValueSerializer(options.get("output")))
                        .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                        .setTransactionalIdPrefix(id)
                        .setProperty("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
        options.producer().forEach(sinkBuilder::setProperty);
        KafkaSink<Tuple2<String, String>> sink = sinkBuilder.build();

        System.err.println(settings(env, options));

        env.fromSource(source, WatermarkStrategy.noWatermarks(), "kafka-input")
                .keyBy(record -> record.f0, Types.STRING)
                .process(new CountPerKey())
                .name("count-per-key")
                .sinkTo(sink)
                .name("kafka-output");

        JobClient job = env.executeAsync("exactly-bench-flink-count");
        AtomicBoolean stopping = new AtomicBoolean();
        Runtime.getRuntime()
                .addShutdownHook(
                        new Thread(
                                () -> {
                                    stopping.set(true);
                                    stop(job, tmpDir);
                                    deleteRecursively(tmpDir);
                                },
                                "flink-count-shutdown"));
        System.out.println("ready");
        System.out.flush();
        try {
            job.getJobExecutionResult().get();
        } catch (ExecutionException e) {
            if (!stopping.get()) {
                throw e;
            }
        }
    }

    /**
     * The settings in effect that matter when comparing the contenders, as
     * one line: {@code settings: object-reuse=true ... producer.linger.ms=20}.
     */
    private static String settings(StreamExecutionEnvironment env, Options options) {
        ReadableConfig conf = env.getConfiguration();
        StringBuilder line = new StringBuilder("settings:");
        line.append(" object-reuse=").append(env.getConfig().isObjectReuseEnabled());
        line.append(" state-backend=").append(conf.get(StateBackendOptions.STATE_BACKEND));
        line.append(" checkpoint-storage=")
                .append(conf.get(CheckpointingOptions.CHECKPOINT_STORAGE));
        line.append(" checkpoint-dir=")
                .append(conf.get(CheckpointingOptions.CHECKPOINTS_DIRECTORY));
        line.append(" checkpoint-interval-ms=").append(env.getCheckpointInterval());
        line.append(" parallelism=").append(env.getParallelism());
        options.producer().forEach((key, value) -> line.append(" producer." + key + "=" + value));
        options.consumer().forEach((key, value) -> line.append(" consumer." + key + "=" + value));
        return line.toString();
    }

    /**
     * Stops the job with a savepoint, which commits the sink's open
     * transactions, unless it has already ended; waits up to
     * {@link #STOP_TIMEOUT} for that.
     */
    private static void stop(JobClient job, Path tmpDir) {
        CompletableFuture<JobExecutionResult> result = job.getJobExecutionResult();
        if (result.isDone()) {
            return;
        }
        try {
            job.stopWithSavepoint(
                            false,
                            tmpDir.resolve("savepoints").toUri().toString(),
                            SavepointFormatType.CANONICAL)
                    .get(STOP_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
            result.handle((ended, failure) -> null)
                    .get(STOP_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (ExecutionException | TimeoutException e) {
            System.err.println("could not stop the job: " + e);
        }
    }

    /** Deletes a directory and everything under it, or says on stderr why not. */
    private static void deleteRecursively(Path dir) {
        try (Stream<Path> paths = Files.walk(dir)) {
            for (Path path : paths.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(path);
            }
        } catch (IOException | UncheckedIOException e) {
            System.err.println("could not delete " + dir + ": " + e);
        }
    }

    /**
     * The command line: the required options by name, and the producer and
     * consumer properties in the order given (a repeated key keeps its last
     * value).
     */
    private record Options(
            Map<String, String> required,
            Map<String, String> producer,
            Map<String, String> consumer) {

        String get(String name) {
            return required.get(name);
        }
    }

    /**
     * Reads {@code --name value} pairs, and exits with a usage message unless
     * every option in {@link #OPTIONS} is given exactly once, and everything
     * else is a {@code --producer-property} or {@code --consumer-property}
     * whose value is {@code KEY=VALUE} with a non-empty key.
     */
    private static Options parseOptions(String[] args) {
        if (args.length % 2 != 0) {
            exitWithUsage();
        }
        Options options =
                new Options(new HashMap<>(), new LinkedHashMap<>(), new LinkedHashMap<>());
        for (int i = 0; i < args.length; i += 2) {
            String name = args[i].startsWith("--") ? args[i].substring(2) : args[i];
            String value = args[i + 1];
            if (name.equals(PRODUCER_PROPERTY) || name.equals(CONSUMER_PROPERTY)) {
                int eq = value.indexOf('=');
                if (eq < 1) {
                    exitWithUsage();
                }
                (name.equals(PRODUCER_PROPERTY) ? options.producer() : options.consumer())
                        .put(value.substring(0, eq), value.substring(eq + 1));
            } else if (!OPTIONS.contains(name) || options.required().put(name, value) != null) {
                exitWithUsage();
            }
        }
        if (!options.required().keySet().equals(OPTIONS)) {
            exitWithUsage();
        }
        return options;
    }

    private static void exitWithUsage() {
        System.err.println(
                "usage: FlinkCount --bootstrap HOST:PORT --input TOPIC --output TOPIC"
                        + " --interval-ms N --parallelism N --id UNIQUE"
                        + " [--producer-property KEY=VALUE]... [--consumer-property KEY=VALUE]...");
        System.exit(2);
    }

    /** Turns a Kafka record into {@code (key, value)}, both decoded as UTF-8. */
    private static final class KeyValueDeserializer
            implements KafkaRecordDeserializationSchema<Tuple2<String, String>> {

        @Override
        public void deserialize(
                ConsumerRecord<byte[], byte[]> record, Collector<Tuple2<String, String>> out) {
            out.collect(
                    Tuple2.of(new String(record.key(), UTF_8), new String(record.value(), UTF_8)));
        }

        @Override
        public TypeInformation<Tuple2<String, String>> getProducedType() {
            return Types.TUPLE(Types.STRING, Types.STRING);
        }
    }

    /**
     * Turns {@code (key, value)} into a record for one topic, encoded as UTF-8,
     * leaving partition and timestamp to the producer's defaults.
     */
    private static final class KeyValueSerializer
            implements KafkaRecordSerializationSchema<Tuple2<String, String>> {

        private final String topic;

        KeyValueSerializer(String topic) {
            this.topic = topic;
        }

        @Override
        public ProducerRecord<byte[], byte[]> serialize(
                Tuple2<String, String> record, KafkaSinkContext context, Long timestamp) {
            return new ProducerRecord<>(topic, record.f0.getBytes(UTF_8), record.f1.getBytes(UTF_8));
        }
    }

    /**
     * Counts the records of each key in keyed state and emits, for each input
     * {@code (key, value)}, {@code (key, value + " " + count)}.
     */
    private static final class CountPerKey
            extends KeyedProcessFunction<String, Tuple2<String, String>, Tuple2<String, String>> {

        private transient ValueState<Long> count;

        @Override
        public void open(OpenContext context) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
        }

        @Override
        public void processElement(
                Tuple2<String, String> record, Context context, Collector<Tuple2<String, String>> out)
                throws Exception {
            Long previous = count.value();
            long next = previous == null ? 1 : previous + 1;
            count.update(next);
            out.collect(Tuple2.of(record.f0, record.f1 + " " + next));
        }
    }
}
