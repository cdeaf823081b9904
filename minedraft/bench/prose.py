"""Natural-language prompts for the bench matrix's low-acceptance regime (`prose`).

The bundled pair is trained on Python's standard library, so English prose is far from its corpus.
Measured on the pair (k=4, 64 tokens, in process): held-out code greedy 0.75 acceptance (mean
accepted length 3.99), code sampled at T=1.0 0.71 (3.84), this prose greedy 0.83 (both models fall
into the same repetition loops), this prose sampled at T=1.0 0.67 (3.66): the regime is prose
sampled at T=1.0, the lowest of the four that real traffic could send. (Random token ids sampled at
T=1.0 go lower, 0.56: the matrix's `noise` regime, a stress case.)
"""

PROSE_PROMPTS = [
    "The weather in the mountains was cold and the travellers decided to rest for the night before",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The history of the Roman empire is a story of conquest, politics and",
    "My favourite recipe for a chocolate cake starts with melting butter and",
    "Dear Sir or Madam, I am writing to complain about the service I received at your",
    "In economics, inflation is the rate at which the general level of prices",
    "She looked out of the window and saw the rain falling on the empty streets of",
    "The football match ended in a draw after both teams scored twice in the second half",
    "The committee will meet again next Tuesday to discuss the budget for the coming year and",
    "Scientists have discovered a new species of frog in the rainforests of South America, which",
    "He opened the letter slowly, afraid of what it might say about his brother and",
    "The best way to learn a new language is to speak it every day with people who",
    "After the storm, the farmers walked through their fields to see how much of the harvest",
    "The museum's new exhibition brings together paintings from the early years of the century, when",
    "Our train was delayed by two hours, so we missed the connection and had to find a hotel near",
    "The novel tells the story of a young woman who leaves her home in the country to work in",
    "Every morning the baker opened his shop at six, and the smell of fresh bread filled the",
    "The city council has approved a plan to build a new bridge across the river, although many",
    "When I was a child, my grandmother used to tell me stories about the war and the years",
    "The hotel room was small but clean, with a view over the harbour where the fishing boats",
    "Researchers say that getting enough sleep is one of the most important things you can do for",
    "The concert began late because the orchestra was waiting for the conductor, who had been",
    "Thank you for your message. Unfortunately I will not be able to attend the meeting on Friday",
    "The garden was full of roses and tall sunflowers, and in the corner stood an old apple tree",
    "During the summer holidays we drove along the coast, stopping in every little town to",
    "The election results were announced late last night, and the opposition party claimed that",
    "The old house at the end of the street had been empty for years, and the children believed",
    "To make a good cup of tea, first warm the pot with boiling water, then add the leaves and",
    "The company reported higher profits this quarter, mainly because of strong sales in Asia and",
    "On the first day of school, the teacher asked each of us to stand up and say something about",
    "The ship sailed out of the harbour at dawn, carrying passengers and goods to the islands in",
    "Walking through the forest in autumn, you can hear the leaves crunching under your feet and",
]
