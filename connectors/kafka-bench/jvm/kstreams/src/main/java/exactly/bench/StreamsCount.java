package exactly.bench;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.ContextualFixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams contender of the Kafka benchmark: an exactly-once running
 * count per key, from one Kafka topic to another.
 *
 * <p>The topology reads the input topic (from the earliest offsets when the
 * application has no committed ones), counts the records of each key in an
 * in-memory key-value store, and writes one record per input record to the
 * output topic: the same key, and the value {@code "<input value> <count>"}
 * where the count includes this record. The store is backed by a changelog
 * topic that Kafka Streams creates; with {@code exactly_once_v2} the output,
 * the changelog and the input offsets are committed in one Kafka transaction
 * per stream thread every {@code --interval-ms}.
 *
 * <p>The store has its record cache on, of Kafka Streams' default size
 * ({@code statestore.cache.max.bytes}, 10485760 bytes in Kafka Streams
 * 4.4.0, divided evenly among the stream threads). The cache only holds
 * back the store's writes: a changed key goes to the in-memory store and
 * its changelog once per commit (or when the cache evicts it), with its
 * latest count, instead of once per update. The output does not go through
 * the cache: the processor forwards one output record per input record at
 * once.
 *
 * <p>Kafka client properties given with {@code --producer-property} and
 * {@code --consumer-property} go to the producer ({@code producer.} prefix)
 * and the main consumer ({@code main.consumer.} prefix), after the
 * program's own settings, so they override them (Kafka Streams itself still
 * overrides the few that exactly-once needs). At start the program prints
 * one {@code settings: ...} line to stderr with the settings in effect that
 * matter for comparing it with the other contenders.
 *
 * <p>It logs at WARN to stderr, prints {@code ready} to stdout the first
 * time the application reaches {@link KafkaStreams.State#RUNNING}, and runs
 * until the process is stopped: on SIGTERM a shutdown hook closes the
 * application and deletes its state directory.
 */
public final class StreamsCount {

    /** The options that are required, each given exactly once as {@code --name value}. */
    private static final Set<String> OPTIONS =
            Set.of("bootstrap", "input", "output", "interval-ms", "parallelism", "id");

    /** Repeatable option: a Kafka producer property, {@code KEY=VALUE}. */
    private static final String PRODUCER_PROPERTY = "producer-property";

    /** Repeatable option: a Kafka consumer property for the main consumer, {@code KEY=VALUE}. */
    private static final String CONSUMER_PROPERTY = "consumer-property";

    /** The name of the store that holds the count of each key. */
    private static final String COUNTS_STORE = "counts";

    /** Producer and broker-side bound for an open transaction (the broker allows at most 20 min). */
    private static final String TRANSACTION_TIMEOUT_MS = "600000";

    private StreamsCount() {}

    /**
     * Starts the application and waits until it stops; exits with status 1
     * when it stops on an error.
     *
     * @param args {@code --bootstrap HOST:PORT --input TOPIC --output TOPIC
     *     --interval-ms N --parallelism N --id UNIQUE}, where {@code --id} is
     *     the {@code application.id} and {@code --parallelism} the number of
     *     stream threads, plus any number of {@code --producer-property
     *     KEY=VALUE} and {@code --consumer-property KEY=VALUE}
     * @throws IOException when the temporary state directory cannot be made
     * @throws InterruptedException when interrupted while waiting
     */
    public static void main(String[] args) throws IOException, InterruptedException {
        Options options = parseOptions(args);
        Path stateDir = Files.createTempDirectory("streams-count-");

        Properties config = new Properties();
        config.put(StreamsConfig.APPLICATION_ID_CONFIG, options.get("id"));
        config.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, options.get("bootstrap"));
        config.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        config.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, options.get("interval-ms"));
        config.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, options.get("parallelism"));
        config.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        config.put(
                StreamsConfig.producerPrefix(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG),
                TRANSACTION_TIMEOUT_MS);
        options.producer().forEach((k, v) -> config.put(StreamsConfig.producerPrefix(k), v));
        options.consumer().forEach((k, v) -> config.put(StreamsConfig.mainConsumerPrefix(k), v));
        System.err.println(settings(config, options));

        KafkaStreams streams = new KafkaStreams(buildTopology(options), config);
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean ready = new AtomicBoolean();
        streams.setStateListener(
                (state, previous) -> {
                    if (state == KafkaStreams.State.RUNNING && ready.compareAndSet(false, true)) {
                        System.out.println("ready");
                        System.out.flush();
                    }
                    if (state == KafkaStreams.State.ERROR
                            || state == KafkaStreams.State.NOT_RUNNING) {
                        stopped.countDown();
                    }
                });
        Runtime.getRuntime()
                .addShutdownHook(
                        new Thread(
                                () -> {
                                    streams.close();
                                    deleteRecursively(stateDir);
                                },
                                "streams-count-shutdown"));

        streams.start();
        stopped.await();
        if (streams.state() == KafkaStreams.State.ERROR) {
            System.exit(1);
        }
    }

    /** input → per-key count in the {@link #COUNTS_STORE} store → output. */
    private static Topology buildTopology(Options options) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(
                Stores.keyValueStoreBuilder(
                                Stores.inMemoryKeyValueStore(COUNTS_STORE),
                                Serdes.String(),
                                Serdes.Long())
                        .withCachingEnabled());
        builder.stream(options.get("input"), Consumed.with(Serdes.String(), Serdes.String()))
                .processValues(CountPerKey::new, COUNTS_STORE)
                .to(options.get("output"), Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }

    /**
     * The settings in effect that matter when comparing the contenders, as
     * one line: {@code settings: store-caching=true
     * statestore.cache.max.bytes=10485760 ... producer.linger.ms=20}. The
     * Streams settings are {@code config} parsed with Kafka Streams' own
     * definitions and defaults (without building a {@link StreamsConfig},
     * which would log its warnings once more).
     */
    private static String settings(Properties config, Options options) {
        Map<String, Object> parsed = StreamsConfig.configDef().parse(config);
        StringBuilder line = new StringBuilder("settings:");
        line.append(" store-caching=true");
        for (String name :
                new String[] {
                    StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG,
                    StreamsConfig.COMMIT_INTERVAL_MS_CONFIG,
                    StreamsConfig.NUM_STREAM_THREADS_CONFIG
                }) {
            line.append(' ').append(name).append('=').append(parsed.get(name));
        }
        options.producer().forEach((key, value) -> line.append(" producer." + key + "=" + value));
        options.consumer().forEach((key, value) -> line.append(" consumer." + key + "=" + value));
        return line.toString();
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
                "usage: StreamsCount --bootstrap HOST:PORT --input TOPIC --output TOPIC"
                        + " --interval-ms N --parallelism N --id UNIQUE"
                        + " [--producer-property KEY=VALUE]... [--consumer-property KEY=VALUE]...");
        System.exit(2);
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
     * Counts the records of each key in the {@link #COUNTS_STORE} store and
     * forwards, for each input value, {@code value + " " + count}.
     */
    private static final class CountPerKey
            extends ContextualFixedKeyProcessor<String, String, String> {

        private KeyValueStore<String, Long> counts;

        @Override
        public void init(FixedKeyProcessorContext<String, String> context) {
            super.init(context);
            counts = context.getStateStore(COUNTS_STORE);
        }

        @Override
        public void process(FixedKeyRecord<String, String> record) {
            Long previous = counts.get(record.key());
            long next = previous == null ? 1 : previous + 1;
            counts.put(record.key(), next);
            context().forward(record.withValue(record.value() + " " + next));
        }
    }
}
